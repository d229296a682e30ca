"""The worker: takes due items, runs their handlers, records the outcomes.

A pipeline (:mod:`retryqueue.worker._pipeline`): ``concurrency`` handler threads and one
heartbeat thread live as long as :meth:`Worker.run`; the run's own thread drives the
database. It keeps up to ``batch_size + prefetch`` claimed items ready so that handlers never
wait for a claim, buffers finished outcomes and records them in one transaction (each with
its history row; completions in a single statement via :meth:`RetryQueue.complete_many`)
together with the next claim. The heartbeat extends the locks of every item held
(prefetched, running, or waiting to be recorded), so a slow handler is never reclaimed; a
worker that lost a lease anyway (it stalled past lock_timeout) sees its outcome refused.

``stop()`` (or SIGTERM/SIGINT after :meth:`Worker.install_signal_handlers`) stops
acquiring, gives unstarted items back to pending at once, lets running handlers finish
within ``shutdown_grace`` and records every buffered outcome before returning. Database
errors are logged and retried with capped exponential backoff. A stopped worker stays
stopped; make a new one to start again.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from functools import partial
from types import FrameType
from typing import Any, Unpack

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import hooks
from retryqueue.errors import DatabaseError, database_error
from retryqueue.queue import RetryQueue
from retryqueue.results import ClaimedItem
from retryqueue.worker._base import (
    AttemptResult,
    Job,
    RunReport,
    WorkerBase,
    WorkerOptions,
    job_for,
)
from retryqueue.worker._batch import Finished
from retryqueue.worker._pipeline import GiveBack, Pipeline, Step, Wait
from retryqueue.worker.listener import NotifyListener, supports_listen
from retryqueue.worker.routing import (
    Handler,
    PermanentError,
    RetryLater,
    Router,
    load_router,
)

__all__ = [
    "AttemptResult",
    "Job",
    "PermanentError",
    "RetryLater",
    "Router",
    "RunReport",
    "Worker",
    "WorkerOptions",
    "job_for",
    "load_router",
]


class Worker(WorkerBase):
    """Runs handlers for queued items in threads; see the module docstring for a round.

    :param sessions: the application's sessionmaker; the worker commits its own
        transactions. On PostgreSQL (psycopg 3) with ``listen=True`` the bound engine also
        gives one connection for LISTEN, unless ``listen_engine`` names another (a direct
        connection when ``sessions`` goes through PgBouncer in transaction pooling mode).
    :param handlers: a :class:`Router` or a mapping of event type to handler.
    :param settings: ``batch_size``, ``lock_timeout``, ``poll_interval``, ``concurrency``,
        ``heartbeat_interval``, ``shutdown_grace``, ``listen``, ``observers``,
        ``worker_id``: see :class:`WorkerOptions` for their meaning and defaults.
    """

    registry_kind = "threaded"

    def __init__(
        self,
        queue: RetryQueue,
        sessions: sessionmaker[Session],
        handlers: Router | Mapping[str, Handler],
        *,
        listen_engine: Engine | None = None,
        **settings: Unpack[WorkerOptions],
    ) -> None:
        super().__init__(queue, handlers, **settings)
        self.sessions = sessions
        self.listen_engine = listen_engine
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards the pipeline's queues
        self._changed = threading.Condition(self._lock)  # the driver waits on it
        self._has_work = threading.Condition(self._lock)  # idle handler threads wait on it
        self._db_lock = threading.Lock()  # serialises the pipeline's writes and heartbeats
        self._wakeup = _Wakeup(self._changed)
        self._previous_handlers: dict[int, Any] = {}
        bind = sessions.kw.get("bind")
        self._engine = bind if isinstance(bind, Engine) else None
        self._solo: Connection | None = None  # see _solo_connection

    # -- lifecycle -----------------------------------------------------------------------

    def run(self, *, install_signals: bool = False) -> RunReport:
        """Process items until :meth:`stop`; returns the totals of the whole run."""
        if install_signals:
            self.install_signal_handlers()
        self._log_started()
        self._registry_round(self._registry_due())  # listed at once, not after a heartbeat
        listener = self._start_listener()
        try:
            total = self._drive(self._pipeline())
        finally:
            if listener is not None:
                listener.close()
            if install_signals:
                self.restore_signal_handlers()
            if self._registered:
                self._registry_round("leave")
        self._log_stopped()
        return total

    def run_once(self) -> RunReport:
        """Acquire one batch, run its handlers and record the outcomes.

        Returns what happened; an empty report if nothing was due or the worker is
        stopping. Raises :class:`~retryqueue.errors.DatabaseError` if acquiring fails.
        """
        if self._stopping.is_set():
            return RunReport()
        with self._transaction("acquire") as session:
            claimed = self._claim(session)
        if not claimed:
            return RunReport()
        pipe = self._pipeline()
        pipe.claiming = False
        pipe.add(claimed)
        return self._drive(pipe) + RunReport(acquired=len(claimed))

    def stop(self) -> None:
        """Stop acquiring; release unstarted items; let running handlers finish (grace)."""
        self._stopping.set()
        self._wakeup.set()
        with self._lock:
            self._has_work.notify_all()

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
        self._log_signal(name)
        self.stop()

    # -- the pipeline ------------------------------------------------------------------

    def _drive(self, pipe: Pipeline) -> RunReport:
        """Run the pipeline until it is done: handler and heartbeat threads for its life."""
        tally: dict[str, int] = {}
        beat_stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat_loop,
            args=(pipe, beat_stop),
            name="retryqueue-heartbeat",
            daemon=True,
        )
        beat.start()
        for number in range(self.concurrency):
            threading.Thread(
                target=self._handler_loop,
                args=(pipe,),
                name=f"retryqueue-handler-{number}",
                daemon=True,
            ).start()
        try:
            self._supervise(pipe, tally)
        finally:
            beat_stop.set()
            with self._lock:
                pipe.closed = True
                self._has_work.notify_all()
            beat.join()
            with self._db_lock:
                self._drop_solo()
        return RunReport(**tally)

    def _supervise(self, pipe: Pipeline, tally: dict[str, int]) -> None:
        deadline: float | None = None
        failures = 0
        while True:
            with self._lock:
                while True:
                    now = time.monotonic()
                    stopping = self._stopping.is_set()
                    if stopping and deadline is None:
                        break
                    if self._wakeup.is_set():
                        pipe.claim_at = 0.0
                    step = pipe.next_step(now, stopping, deadline)
                    if isinstance(step, Step | GiveBack | Wait):
                        break
                    self._changed.wait(step)
            if stopping and deadline is None:
                deadline = now + self.shutdown_grace
                self._release_unstarted(pipe, tally)
            elif step is Wait.DONE:
                return
            elif step is Wait.ABANDON:
                with self._db_lock, self._lock:
                    self._report_abandoned(pipe.abandon_running(), tally)
                return
            elif isinstance(step, GiveBack):
                self._release_unstarted(pipe, tally, step.items)
            elif isinstance(step, Step):
                failures = self._run_step(pipe, step, failures, tally)

    def _run_step(self, pipe: Pipeline, step: Step, failures: int, tally: dict[str, int]) -> int:
        """One pipeline transaction; returns the count of failed transactions in a row."""
        plans = self._plans(step.outcomes)
        if step.claim:
            self._wakeup.clear()  # a NOTIFY from now on ends the idle wait that may follow
        operation = "record outcomes" if step.outcomes else "acquire"
        dialect = "" if self._engine is None else self._engine.dialect.name
        single = self._single_statement(step, plans, dialect)
        try:
            with self._db_lock:
                with self._transaction(operation, autocommit=single) as session:
                    outcomes, claimed = self._flush(
                        session, step.outcomes, plans, step.claim, single
                    )
                pipe.forget(done.item.id for done in step.outcomes)
                with self._lock:
                    pipe.add(claimed)
                    self._has_work.notify(len(claimed))
        except DatabaseError as exc:
            with self._db_lock, self._lock:
                given_up = self._flush_failed(pipe, step, failures + 1, exc)
            lost = {done.item.id: "lost" for done in given_up}
            self._report_all(given_up, self._plans(given_up), lost, tally)
            return failures + 1
        if claimed:
            tally["acquired"] = tally.get("acquired", 0) + len(claimed)
        if len(claimed) < step.claim:  # the queue ran dry: wait until due or NOTIFY
            idle_for = self._idle_wait()
            with self._lock:
                self._after_claim(pipe, step.claim, len(claimed), idle_for)
        self._report_all(step.outcomes, plans, outcomes, tally)
        return 0

    def _handler_loop(self, pipe: Pipeline) -> None:
        """A handler thread: run ready items until the pipeline closes."""
        while True:
            with self._lock:
                while (item := pipe.next_item(self._stopping.is_set())) is None:
                    if pipe.closed:
                        return
                    self._has_work.wait()
            done = self._attempt(pipe, item)
            with self._lock:
                pipe.finish(done)
                self._changed.notify()

    def _attempt(self, pipe: Pipeline, item: ClaimedItem) -> Finished:
        """The one place a handler attempt runs; its exception, if any, is the outcome."""
        route = self.router.resolve(item.event_type, item.plugin_name)
        started = time.monotonic()
        error: BaseException | None = None
        if route is not None:
            try:
                job = job_for(item, partial(self._extend_one, pipe, item.id))
                if (hook := hooks.active) is None:  # instrumentation seam: retryqueue.hooks
                    route.handler(job)
                else:
                    with hook.attempt(item):
                        route.handler(job)
            except BaseException as exc:  # a handler must never kill its thread
                error = exc
        return Finished(item, route, error, time.monotonic() - started)

    # -- writes ---------------------------------------------------------------------------

    def _registry_round(self, step: str | None) -> None:
        """Register, heartbeat or leave the worker registry (one transaction)."""
        if step is None:
            return
        try:
            with self._transaction("worker registry") as session:
                self._registry_step(session, step)
        except DatabaseError as exc:
            self._registry_done(step, exc)
        else:
            self._registry_done(step, None)

    @contextmanager
    def _transaction(self, operation: str, *, autocommit: bool = False) -> Iterator[Session]:
        """A session in a transaction; ``autocommit``: on the driver's autocommitted
        connection instead, for a step that is a single statement (driver thread only)."""
        try:
            if autocommit and self._engine is not None:
                try:
                    with self.sessions(bind=self._solo_connection(self._engine)) as session:
                        yield session
                except (SQLAlchemyError, DatabaseError):
                    self._drop_solo()  # it may be broken: the next flush connects afresh
                    raise
            else:
                with self.sessions.begin() as session:
                    yield session
        except SQLAlchemyError as exc:  # commit/rollback errors are not wrapped by the queue
            raise database_error(operation, exc) from exc

    def _solo_connection(self, engine: Engine) -> Connection:
        """The autocommitted connection the driver keeps for its single-statement flushes
        (checked out once, not once per batch; returned when the drive ends)."""
        if self._solo is None:
            connection = engine.connect()
            try:
                self._solo = connection.execution_options(isolation_level="AUTOCOMMIT")
            except BaseException:
                connection.close()
                raise
        return self._solo

    def _drop_solo(self) -> None:
        solo, self._solo = self._solo, None
        if solo is not None:
            with suppress(SQLAlchemyError):
                solo.close()

    def _release_unstarted(
        self, pipe: Pipeline, tally: dict[str, int], overdue: list[ClaimedItem] | None = None
    ) -> None:
        """Give back the items no handler started: all at shutdown, or the ``overdue``."""
        if overdue is None:
            with self._lock:
                unstarted = pipe.take_unstarted()
        else:
            unstarted = overdue
        if not unstarted:
            return
        ids = [item.id for item in unstarted]
        released: int | DatabaseError
        with self._db_lock:
            pipe.forget(ids)
            try:
                with self._transaction("release") as session:
                    released = self._release(session, unstarted)
            except DatabaseError as exc:
                released = exc
        self._report_released(ids, released, tally, "unstarted" if overdue is None else "overdue")

    # -- leases --------------------------------------------------------------------------

    def _heartbeat_loop(self, pipe: Pipeline, stop: threading.Event) -> None:
        """The one periodic heartbeat of a running worker: renew every lease held, and keep
        the worker's row in the registry alive (also while idle)."""
        while not stop.wait(self.heartbeat_interval):
            try:
                self._renew_held(pipe, None)
            except DatabaseError as exc:
                self._log_heartbeat_failed(exc)
            self._registry_round(self._registry_due())

    def _extend_one(self, pipe: Pipeline, item_id: int) -> bool:
        return item_id in self._renew_held(pipe, [item_id])

    def _renew_held(self, pipe: Pipeline, only: list[int] | None) -> set[int]:
        with self._db_lock:
            held = pipe.held_items(only)
            if not held:
                return set()
            with self._transaction("heartbeat") as session:
                kept = self._renew(session, held)
            self._note_renewal(pipe, held, kept)
            return kept

    # -- waiting -------------------------------------------------------------------------

    def _start_listener(self) -> NotifyListener | None:
        bind = self.listen_engine or self.sessions.kw.get("bind")
        if not self.listen or not isinstance(bind, Engine) or not supports_listen(bind):
            return None
        listener = NotifyListener(bind, self._wakeup)
        listener.start()
        return listener

    def _idle_wait(self) -> float:
        """Seconds to sleep: until the next item is due, at most poll_interval."""
        try:
            with self._transaction("seconds_until_claimable") as session:
                return self._idle_for(self._due(session))
        except DatabaseError as exc:
            self._log_due_unknown(exc)
            return self.poll_interval


class _Wakeup(threading.Event):
    """The idle wake-up (NOTIFY, stop): an event that also wakes the pipeline's driver."""

    def __init__(self, changed: threading.Condition) -> None:
        super().__init__()
        self._changed = changed

    def set(self) -> None:
        super().set()
        with self._changed:
            self._changed.notify_all()
