"""The worker: takes due items, runs their handlers, records the outcomes.

Each round is three short steps: one transaction acquires a batch; the handlers run outside
any transaction (``concurrency`` at a time); one transaction records the outcomes
(completions in a single statement via :meth:`RetryQueue.complete_many`). A heartbeat thread
extends the locks of the batch while handlers run, so a slow handler is never reclaimed;
a worker that lost a lease anyway (it stalled past lock_timeout) sees its outcome refused.

``stop()`` (or SIGTERM/SIGINT after :meth:`Worker.install_signal_handlers`) stops
acquiring, gives unstarted items back to pending at once and lets running handlers finish
within ``shutdown_grace``. Database errors are logged and retried with capped exponential
backoff. A stopped worker stays stopped; make a new one to start again.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from functools import partial
from types import FrameType, MappingProxyType
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import validation as check
from retryqueue._batch import Batch, Finished, by_token
from retryqueue.errors import DatabaseError, InvalidArgument, database_error
from retryqueue.listener import NotifyListener, supports_listen
from retryqueue.queue import RetryQueue
from retryqueue.results import ClaimedItem
from retryqueue.routing import (
    Handler,
    PermanentError,
    RetryLater,
    Router,
    as_router,
    load_router,
    plan_failure,
)

__all__ = [
    "AttemptResult",
    "Job",
    "PermanentError",
    "RetryLater",
    "Router",
    "RunReport",
    "Worker",
    "job_for",
    "load_router",
]

logger = logging.getLogger("retryqueue.worker")

_MAX_BACKOFF = 30.0
_RECHECK_SOON = 0.25  # idle wait when something looked due but could not be taken
_RECLAIM_EVERY = 15.0  # upper bound between two looks for stale locks


@dataclass(frozen=True, slots=True)
class Job:
    """What a handler receives: one item's data, read-only, and a way to extend its lease.

    ``attempt`` is 1 for the first run. ``event_data`` and ``metadata`` are read-only views
    (mappings and tuples); copy them to modify.
    """

    id: int
    event_id: uuid.UUID
    event_type: str
    event_data: Any
    metadata: Mapping[str, Any]
    channel_name: str | None
    plugin_name: str | None
    correlation_id: str | None
    tags: tuple[str, ...]
    attempt: int
    max_retries: int
    priority: int
    _extend: Callable[[], bool] = field(repr=False, compare=False)

    def extend_lease(self) -> bool:
        """Heartbeat this item now; False if the lease was already lost (stop working on it).

        Raises :class:`~retryqueue.errors.DatabaseError` if the database cannot be reached.
        """
        return self._extend()


@dataclass(frozen=True, slots=True)
class RunReport:
    """What a round (or a whole run) did, counted per outcome.

    ``lost``: outcomes refused because the lease had been taken over. ``released``: items
    given back unstarted at shutdown. ``abandoned``: handlers still running when the
    shutdown grace ran out (their items return after lock_timeout).
    """

    acquired: int = 0
    completed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    failed: int = 0
    lost: int = 0
    released: int = 0
    abandoned: int = 0

    def __add__(self, other: RunReport) -> RunReport:
        return RunReport(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """One attempt, as passed to every observer once its outcome is recorded.

    ``outcome`` is ``completed``, ``retry_scheduled``, ``dead_lettered``, ``failed`` or
    ``lost``.
    """

    item_id: int
    event_type: str
    plugin_name: str | None
    attempt: int
    outcome: str
    duration_seconds: float
    error_code: str | None


Observer = Callable[[AttemptResult], object]

_REPORT_FIELD = {
    "completed": "completed",
    "retry_scheduled": "retried",
    "dead_lettered": "dead_lettered",
    "failed": "failed",
    "lost": "lost",
}
_LOG_LEVEL = {
    "completed": logging.INFO,
    "retry_scheduled": logging.WARNING,
    "dead_lettered": logging.ERROR,
    "failed": logging.ERROR,
    "lost": logging.WARNING,
}


def job_for(item: ClaimedItem, extend_lease: Callable[[], bool]) -> Job:
    """The :class:`Job` a handler receives for a claimed item.

    ``extend_lease`` renews the item's lock and says whether it is still held.
    """
    return Job(
        id=item.id,
        event_id=item.event_id,
        event_type=item.event_type,
        event_data=item.event_data,
        metadata=item.event_metadata or MappingProxyType({}),
        channel_name=item.channel_name,
        plugin_name=item.plugin_name,
        correlation_id=item.correlation_id,
        tags=item.tags,
        attempt=item.attempt,
        max_retries=item.max_retries,
        priority=item.priority,
        _extend=extend_lease,
    )


def default_worker_id() -> str:
    """Host name, process id and a random suffix (a restarted process is a new worker)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"[-255:]


class Worker:
    """Runs handlers for queued items; see the module docstring for the life of a round.

    :param sessions: the application's sessionmaker; the worker commits its own
        transactions. On PostgreSQL (psycopg 3) with ``listen=True`` the bound engine also
        gives one connection for LISTEN.
    :param handlers: a :class:`Router` or a mapping of event type to handler.
    :param heartbeat_interval: seconds between lock renewals (default lock_timeout / 3).
    :param observers: callables receiving an :class:`AttemptResult` after each attempt.
    """

    def __init__(
        self,
        queue: RetryQueue,
        sessions: sessionmaker[Session],
        handlers: Router | Mapping[str, Handler],
        *,
        worker_id: str | None = None,
        batch_size: int = 10,
        lock_timeout: float = 300,
        poll_interval: float = 1.0,
        concurrency: int = 1,
        heartbeat_interval: float | None = None,
        shutdown_grace: float = 30.0,
        listen: bool = True,
        observers: Iterable[Observer] = (),
    ) -> None:
        self.queue = queue
        self.sessions = sessions
        self.router = as_router(handlers)
        self.worker_id = check.text("worker_id", worker_id or default_worker_id())
        self.batch_size = check.bounded_int("batch_size", batch_size, low=1, high=10_000)
        self.lock_timeout = check.seconds("lock_timeout", lock_timeout, allow_zero=False)
        self.poll_interval = check.seconds("poll_interval", poll_interval, allow_zero=False)
        self.concurrency = check.bounded_int("concurrency", concurrency, low=1, high=1024)
        beat = self.lock_timeout / 3 if heartbeat_interval is None else heartbeat_interval
        self.heartbeat_interval = check.seconds("heartbeat_interval", beat, allow_zero=False)
        if self.heartbeat_interval >= self.lock_timeout:
            raise InvalidArgument("heartbeat_interval", "must be shorter than lock_timeout")
        self.shutdown_grace = check.seconds("shutdown_grace", shutdown_grace)
        self.listen = listen
        self.observers = tuple(observers)
        self._stopping = threading.Event()
        self._wakeup = threading.Event()
        self._batch_lock = threading.Lock()
        self._batch: Batch | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._next_reclaim = 0.0

    def __repr__(self) -> str:
        return f"Worker(worker_id={self.worker_id!r}, router={self.router!r})"

    # -- lifecycle -----------------------------------------------------------------------

    def run(self, *, install_signals: bool = False) -> RunReport:
        """Process items until :meth:`stop`; returns the totals of the whole run."""
        if install_signals:
            self.install_signal_handlers()
        listener = self._start_listener()
        total, failures = RunReport(), 0
        try:
            while not self._stopping.is_set():
                self._wakeup.clear()  # a NOTIFY from now on ends the idle wait below
                try:
                    report = self.run_once()
                    idle_for = None if report.acquired else self._idle_wait()
                    failures = 0
                except DatabaseError as exc:
                    failures += 1
                    delay = min(_MAX_BACKOFF, 0.5 * 2 ** (failures - 1)) * random.uniform(0.8, 1.2)
                    logger.warning(
                        "database unavailable, retrying in %.1fs: %s",
                        delay,
                        exc,
                        extra={"worker_id": self.worker_id, "backoff_s": delay},
                    )
                    self._stopping.wait(delay)
                    continue
                total += report
                if idle_for is not None:
                    logger.debug(
                        "idle for up to %.2fs",
                        idle_for,
                        extra={"worker_id": self.worker_id, "wait_s": idle_for},
                    )
                    self._wakeup.wait(idle_for)
        finally:
            if listener is not None:
                listener.close()
            if install_signals:
                self.restore_signal_handlers()
        logger.info("worker stopped", extra={"worker_id": self.worker_id})
        return total

    def run_once(self) -> RunReport:
        """Acquire one batch, run its handlers and record the outcomes.

        Returns what happened; an empty report if nothing was due or the worker is
        stopping. Raises :class:`~retryqueue.errors.DatabaseError` if acquiring fails.
        """
        if self._stopping.is_set():
            return RunReport()
        reclaim = time.monotonic() >= self._next_reclaim
        with self._transaction("acquire") as session:
            claimed = self.queue.acquire(
                session,
                self.worker_id,
                self.batch_size,
                self.lock_timeout,
                reclaim_stale=reclaim,
            )
        if reclaim:  # stale locks are looked for a few times per lock_timeout, not per batch
            self._next_reclaim = time.monotonic() + min(self.lock_timeout / 4, _RECLAIM_EVERY)
        if not claimed:
            return RunReport()
        logger.debug("acquired %d items", len(claimed), extra={"worker_id": self.worker_id})
        return self._process(Batch(claimed))

    def stop(self) -> None:
        """Stop acquiring; release unstarted items; let running handlers finish (grace)."""
        self._stopping.set()
        self._wakeup.set()
        with self._batch_lock:
            if self._batch is not None:
                self._batch.poke()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping.is_set()

    def install_signal_handlers(self) -> None:
        """Make SIGTERM and SIGINT call :meth:`stop` (main thread only)."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def restore_signal_handlers(self) -> None:
        """Put back the handlers that :meth:`install_signal_handlers` replaced."""
        for signum, previous in self._previous_handlers.items():
            signal.signal(signum, previous)
        self._previous_handlers.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # stop() takes locks the interrupted main thread might hold: run it elsewhere.
        name = signal.Signals(signum).name
        threading.Thread(target=self._stop_on_signal, args=(name,), daemon=True).start()

    def _stop_on_signal(self, name: str) -> None:
        logger.info(
            "%s received, shutting down", name, extra={"worker_id": self.worker_id, "signal": name}
        )
        self.stop()

    # -- one batch -----------------------------------------------------------------------

    def _process(self, batch: Batch) -> RunReport:
        tally = {"acquired": len(batch.items)}
        with self._batch_lock:
            self._batch = batch
        if self._stopping.is_set():
            batch.poke()
        beat_stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat_loop,
            args=(batch, beat_stop),
            name="retryqueue-heartbeat",
            daemon=True,
        )
        beat.start()
        for number in range(min(self.concurrency, len(batch.items))):
            threading.Thread(
                target=self._run_handlers,
                args=(batch,),
                name=f"retryqueue-handler-{number}",
                daemon=True,
            ).start()
        try:
            self._supervise(batch, tally)
        finally:
            beat_stop.set()
            beat.join()
            with self._batch_lock:
                self._batch = None
        return RunReport(**tally)

    def _supervise(self, batch: Batch, tally: dict[str, int]) -> None:
        deadline: float | None = None
        while True:
            if deadline is None and self._stopping.is_set():
                deadline = time.monotonic() + self.shutdown_grace
                self._release_unstarted(batch, tally)
            finished = batch.wait_for_outcomes(self._stopping, deadline)
            if finished:
                self._record(batch, finished, tally)
            if batch.done():
                return
            if deadline is not None and time.monotonic() >= deadline and not batch.has_finished():
                with batch.db_lock:
                    abandoned = batch.abandon_running()
                for item in abandoned:
                    logger.warning(
                        "shutdown grace ran out; item %s left to expire",
                        item.id,
                        extra=_fields(item, self.worker_id, outcome="abandoned"),
                    )
                    tally["abandoned"] = tally.get("abandoned", 0) + 1
                return

    def _run_handlers(self, batch: Batch) -> None:
        while (item := batch.next_item(self._stopping)) is not None:
            route = self.router.resolve(item.event_type, item.plugin_name)
            started = time.monotonic()
            error: BaseException | None = None
            if route is not None:
                try:
                    route.handler(self._job(batch, item))
                except BaseException as exc:  # a handler must never kill its thread
                    error = exc
            batch.finish(Finished(item, route, error, time.monotonic() - started))

    def _job(self, batch: Batch, item: ClaimedItem) -> Job:
        return job_for(item, partial(self._extend_one, batch, item.id))

    # -- writes ---------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, operation: str) -> Iterator[Session]:
        try:
            with self.sessions.begin() as session:
                yield session
        except SQLAlchemyError as exc:  # commit/rollback errors are not wrapped by the queue
            raise database_error(operation, exc) from exc

    def _record(self, batch: Batch, finished: list[Finished], tally: dict[str, int]) -> None:
        plans = [plan_failure(f.item, f.route, f.error, self.queue.policy) for f in finished]
        successes = [f for f, plan in zip(finished, plans, strict=True) if plan is None]
        failing = 0
        while True:
            try:
                with batch.db_lock:
                    outcomes = self._write_outcomes(successes, finished, plans)
                    batch.forget(f.item.id for f in finished)
                    break
            except DatabaseError as exc:
                failing += 1
                if time.monotonic() - batch.renewed_at > self.lock_timeout:
                    logger.error(
                        "giving up recording %d outcomes (leases expired): %s",
                        len(finished),
                        exc,
                        extra={"worker_id": self.worker_id},
                    )
                    outcomes = {f.item.id: "lost" for f in finished}
                    batch.forget(f.item.id for f in finished)
                    break
                delay = min(_MAX_BACKOFF, 0.25 * 2 ** (failing - 1))
                logger.warning(
                    "recording outcomes failed, retrying in %.1fs: %s",
                    delay,
                    exc,
                    extra={"worker_id": self.worker_id, "backoff_s": delay},
                )
                time.sleep(delay)
        for done, plan in zip(finished, plans, strict=True):
            self._report(done, outcomes[done.item.id], plan.code if plan else None, tally)

    def _write_outcomes(
        self, successes: list[Finished], finished: list[Finished], plans: list[Any]
    ) -> dict[int, str]:
        outcomes: dict[int, str] = {}
        with self._transaction("record outcomes") as session:
            completed = (
                self.queue.complete_many(
                    session,
                    [f.item for f in successes],
                    durations_ms=[f.duration_ms for f in successes],
                )
                if successes
                else set()
            )
            for done in successes:
                outcomes[done.item.id] = "completed" if done.item.id in completed else "lost"
            for done, plan in zip(finished, plans, strict=True):
                if plan is None:
                    continue
                recorded = self.queue.fail(
                    session,
                    done.item,
                    error_message=plan.message,
                    error_code=plan.code,
                    retryable=plan.retryable,
                    retry_after=plan.retry_after,
                    duration_ms=done.duration_ms,
                    policy=plan.policy,
                )
                outcomes[done.item.id] = plan.decision.outcome.value if recorded else "lost"
        return outcomes

    def _report(
        self, done: Finished, outcome: str, code: str | None, tally: dict[str, int]
    ) -> None:
        key = _REPORT_FIELD[outcome]
        tally[key] = tally.get(key, 0) + 1
        item = done.item
        extra = _fields(
            item, self.worker_id, outcome=outcome, duration_ms=done.duration_ms, error_code=code
        )
        if outcome == "lost":
            logger.warning(
                "item %s: lease lost, outcome refused (another worker owns it)",
                item.id,
                extra=extra,
            )
        else:
            logger.log(
                _LOG_LEVEL[outcome],
                "item %s (%s) attempt %d: %s in %d ms%s",
                item.id,
                item.event_type,
                item.attempt,
                outcome,
                done.duration_ms,
                f" [{code}]" if code else "",
                extra=extra,
            )
        result = AttemptResult(
            item.id,
            item.event_type,
            item.plugin_name,
            item.attempt,
            outcome,
            done.duration_seconds,
            code,
        )
        for observer in self.observers:
            try:
                observer(result)
            except Exception:
                logger.warning(
                    "observer %r failed",
                    observer,
                    exc_info=True,
                    extra={"worker_id": self.worker_id},
                )

    def _release_unstarted(self, batch: Batch, tally: dict[str, int]) -> None:
        unstarted = batch.take_unstarted()
        if not unstarted:
            return
        ids = [item.id for item in unstarted]
        with batch.db_lock:
            batch.forget(ids)
            try:
                released = 0
                with self._transaction("release") as session:
                    for token, token_ids in by_token(unstarted).items():
                        released += len(
                            self.queue.release(
                                session, self.worker_id, token_ids, lease_token=token
                            )
                        )
            except DatabaseError as exc:
                logger.warning(
                    "could not release %d unstarted items; they return after lock_timeout: %s",
                    len(ids),
                    exc,
                    extra={"worker_id": self.worker_id},
                )
                return
        tally["released"] = tally.get("released", 0) + released
        logger.info(
            "released %d unstarted items",
            released,
            extra={"worker_id": self.worker_id, "item_ids": ids},
        )

    # -- leases --------------------------------------------------------------------------

    def _heartbeat_loop(self, batch: Batch, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_interval):
            try:
                self._renew(batch, None)
            except DatabaseError as exc:
                logger.warning("heartbeat failed: %s", exc, extra={"worker_id": self.worker_id})

    def _extend_one(self, batch: Batch, item_id: int) -> bool:
        return item_id in self._renew(batch, [item_id])

    def _renew(self, batch: Batch, only: list[int] | None) -> set[int]:
        with batch.db_lock:
            held = batch.held_items(only)
            if not held:
                return set()
            kept: set[int] = set()
            with self._transaction("heartbeat") as session:
                for token, ids in by_token(held).items():
                    kept.update(
                        self.queue.heartbeat(session, self.worker_id, ids, lease_token=token)
                    )
            batch.renewed_at = time.monotonic()
            for item in batch.mark_lost(item for item in held if item.id not in kept):
                logger.warning(
                    "item %s: lease lost while its handler runs",
                    item.id,
                    extra=_fields(item, self.worker_id, outcome="lost"),
                )
            return kept

    # -- waiting -------------------------------------------------------------------------

    def _start_listener(self) -> NotifyListener | None:
        bind = self.sessions.kw.get("bind")
        if not self.listen or not isinstance(bind, Engine) or not supports_listen(bind):
            return None
        listener = NotifyListener(bind, self._wakeup)
        listener.start()
        return listener

    def _idle_wait(self) -> float:
        """Seconds to sleep: until the next item is due, at most poll_interval."""
        try:
            with self._transaction("seconds_until_claimable") as session:
                due = self.queue.seconds_until_claimable(session)
        except DatabaseError as exc:
            logger.debug("could not read the next due time: %s", exc)
            return self.poll_interval
        if due is None:
            return self.poll_interval
        if due <= 0:
            return min(self.poll_interval, _RECHECK_SOON)
        return min(self.poll_interval, due + 0.01)


def _fields(item: ClaimedItem, worker_id: str, **more: Any) -> dict[str, Any]:
    return {
        "item_id": item.id,
        "event_type": item.event_type,
        "attempt": item.attempt,
        "plugin_name": item.plugin_name,
        "worker_id": worker_id,
        **more,
    }
