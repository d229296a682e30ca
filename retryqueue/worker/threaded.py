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

import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from types import FrameType
from typing import Any, Unpack

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import hooks
from retryqueue.errors import DatabaseError, database_error
from retryqueue.queue import RetryQueue
from retryqueue.worker._base import (
    AttemptResult,
    Job,
    RunReport,
    WorkerBase,
    WorkerOptions,
    job_for,
)
from retryqueue.worker._batch import Batch, Finished
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
        self._wakeup = threading.Event()
        self._batch_lock = threading.Lock()
        self._batch: Batch | None = None
        self._previous_handlers: dict[int, Any] = {}

    # -- lifecycle -----------------------------------------------------------------------

    def run(self, *, install_signals: bool = False) -> RunReport:
        """Process items until :meth:`stop`; returns the totals of the whole run."""
        if install_signals:
            self.install_signal_handlers()
        self._log_started()
        listener = self._start_listener()
        total, failures = RunReport(), 0
        try:
            while not self._stopping.is_set():
                self._wakeup.clear()  # a NOTIFY from now on ends the idle wait below
                self._registry_round(self._registry_due())
                try:
                    report = self.run_once()
                    idle_for = None if report.acquired else self._idle_wait()
                    failures = 0
                except DatabaseError as exc:
                    failures += 1
                    self._stopping.wait(self._outage_delay(failures, exc))
                    continue
                total += report
                if idle_for is not None:
                    self._log_idle(idle_for)
                    self._wakeup.wait(idle_for)
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
        self._log_signal(name)
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
                    self._report_abandoned(batch.abandon_running(), tally)
                return

    def _run_handlers(self, batch: Batch) -> None:
        while (item := batch.next_item(self._stopping.is_set())) is not None:
            route = self.router.resolve(item.event_type, item.plugin_name)
            started = time.monotonic()
            error: BaseException | None = None
            if route is not None:
                try:
                    job = job_for(item, partial(self._extend_one, batch, item.id))
                    if (hook := hooks.active) is None:  # instrumentation seam: retryqueue.hooks
                        route.handler(job)
                    else:
                        with hook.attempt(item):
                            route.handler(job)
                except BaseException as exc:  # a handler must never kill its thread
                    error = exc
            batch.finish(Finished(item, route, error, time.monotonic() - started))

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
    def _transaction(self, operation: str) -> Iterator[Session]:
        try:
            with self.sessions.begin() as session:
                yield session
        except SQLAlchemyError as exc:  # commit/rollback errors are not wrapped by the queue
            raise database_error(operation, exc) from exc

    def _record(self, batch: Batch, finished: list[Finished], tally: dict[str, int]) -> None:
        plans = self._plans(finished)
        failing = 0
        while True:
            try:
                with batch.db_lock:
                    with self._transaction("record outcomes") as session:
                        outcomes = self._write_outcomes(session, finished, plans)
                    batch.forget(f.item.id for f in finished)
                    break
            except DatabaseError as exc:
                failing += 1
                delay = self._recording_delay(batch, finished, failing, exc)
                if delay is None:
                    outcomes = {f.item.id: "lost" for f in finished}
                    with batch.db_lock:
                        batch.forget(f.item.id for f in finished)
                    break
                time.sleep(delay)
        self._report_all(finished, plans, outcomes, tally)

    def _release_unstarted(self, batch: Batch, tally: dict[str, int]) -> None:
        unstarted = batch.take_unstarted()
        if not unstarted:
            return
        ids = [item.id for item in unstarted]
        released: int | DatabaseError
        with batch.db_lock:
            batch.forget(ids)
            try:
                with self._transaction("release") as session:
                    released = self._release(session, unstarted)
            except DatabaseError as exc:
                released = exc
        self._report_released(ids, released, tally)

    # -- leases --------------------------------------------------------------------------

    def _heartbeat_loop(self, batch: Batch, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_interval):
            try:
                self._renew_batch(batch, None)
            except DatabaseError as exc:
                self._log_heartbeat_failed(exc)

    def _extend_one(self, batch: Batch, item_id: int) -> bool:
        return item_id in self._renew_batch(batch, [item_id])

    def _renew_batch(self, batch: Batch, only: list[int] | None) -> set[int]:
        with batch.db_lock:
            held = batch.held_items(only)
            if not held:
                return set()
            with self._transaction("heartbeat") as session:
                kept = self._renew(session, held)
            self._note_renewal(batch, held, kept)
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
