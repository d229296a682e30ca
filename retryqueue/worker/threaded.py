"""The worker: takes due items, runs their handlers, records the outcomes.

A pipeline (:mod:`retryqueue.worker._pipeline`): ``concurrency`` handler threads and one
heartbeat thread live as long as :meth:`Worker.run`; the run's own thread and, on
PostgreSQL, one more drive the database (``in_flight``: up to two transactions at once,
each on its own connection). With ``concurrency=1`` and two transactions in flight there
is no handler thread: the drivers run the handlers themselves, taking turns (see
:meth:`Worker._inline`). It keeps up to ``batch_size + prefetch`` claimed items ready
so that handlers never wait for a claim, buffers finished outcomes and records them in one
transaction (each with its history row; completions in a single statement via
:meth:`RetryQueue.complete_many`) together with the next claim. The heartbeat extends the
locks of every item held (prefetched, running, or waiting to be recorded), so a slow
handler is never reclaimed; a worker that lost a lease anyway (it stalled past
lock_timeout) sees its outcome refused. Its transactions outside the flushes, leases and
idle wait are in :mod:`retryqueue.worker._threaded_io`; its handler threads, inline turns
and attempts in :mod:`retryqueue.worker._threaded_calls`.

``stop()`` (or SIGTERM/SIGINT after :meth:`Worker.install_signal_handlers`) stops
acquiring, gives unstarted items back to pending at once, lets running handlers finish
within ``shutdown_grace`` and records every buffered outcome before returning. Database
errors are logged and retried with capped exponential backoff. A stopped worker stays
stopped; make a new one to start again.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Mapping
from types import FrameType
from typing import Any, Unpack

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from retryqueue.errors import DatabaseError
from retryqueue.queue import RetryQueue
from retryqueue.worker._attempts import AttemptResult, Job, RunReport, job_for
from retryqueue.worker._pipeline import GiveBack, Pipeline, Step, Wait
from retryqueue.worker._settings import WorkerOptions
from retryqueue.worker._threaded_calls import ThreadedCalls
from retryqueue.worker._threaded_io import Wakeup, WorkerLane
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


class Worker(ThreadedCalls):
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
        self._ended = threading.Condition(self._lock)  # run's thread waits for drivers on it
        self._db_lock = threading.Lock()  # one lease renewal or release at a time
        self._wakeup = Wakeup(self._changed)
        self._previous_handlers: dict[int, Any] = {}
        bind = sessions.kw.get("bind")
        self._engine = bind if isinstance(bind, Engine) else None
        self._dialect = "" if self._engine is None else self._engine.dialect.name
        self._report_lock = threading.Lock()  # the run's tally and the observers' calls
        self._failures = 0  # pipeline transactions failed in a row
        self._crash: BaseException | None = None  # a driver's unexpected error
        self._deadline: float | None = None  # the shutdown grace's end, once stopping
        self._turn = False  # inline: a driver is running handlers now
        self._drivers = 0  # driver threads still running (not counting run's own thread)

    # -- lifecycle -----------------------------------------------------------------------

    def run(self, *, install_signals: bool = False) -> RunReport:
        """Process items until :meth:`stop`; returns the totals of the whole run."""
        if install_signals:
            self.install_signal_handlers()
        self._log_started()
        self._registry_round(self._registry_due())  # listed at once, not after a heartbeat
        listener = self._start_listener()
        try:
            total = self._drive(self._pipeline(self._dialect))
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
        pipe = self._pipeline(self._dialect)
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
        """Run the pipeline until it is done: a heartbeat thread for its life and
        ``pipe.depth`` drivers, each running one pipeline transaction at a time on its own
        connection. With one handler at a time (``concurrency=1``) and room for two
        transactions, the drivers run the handlers themselves, taking turns (see
        :meth:`_inline`); otherwise ``concurrency`` handler threads do, and this thread is
        one of the drivers."""
        tally: dict[str, int] = {}
        beat_stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat_loop,
            args=(pipe, beat_stop),
            name="retryqueue-heartbeat",
            daemon=True,
        )
        beat.start()
        inline = pipe.side_by_side = self._inline(pipe)
        for number in range(0 if inline else self.concurrency):
            threading.Thread(
                target=self._handler_loop,
                args=(pipe,),
                name=f"retryqueue-handler-{number}",
                daemon=True,
            ).start()
        self._deadline = None
        self._turn = False
        drivers = [
            threading.Thread(
                target=self._supervise,
                args=(pipe, tally, inline),
                name=f"retryqueue-driver-{number}",
                daemon=True,
            )
            for number in range(0 if inline else 1, pipe.depth)
        ]
        self._drivers = len(drivers)
        for driver in drivers:
            driver.start()
        try:
            if inline:
                self._await_drivers(pipe)
            else:
                self._supervise(pipe, tally, False, primary=True)
        finally:
            if not inline:
                for driver in drivers:
                    driver.join()
            beat_stop.set()
            with self._lock:
                pipe.closed = True
                self._has_work.notify_all()
                crash, self._crash = self._crash, None
            beat.join()
        if crash is not None:
            raise crash
        return RunReport(**tally)

    def _supervise(
        self, pipe: Pipeline, tally: dict[str, int], inline: bool, primary: bool = False
    ) -> None:
        """A driver: take the pipeline's next step and run it (and, ``inline``, turns of
        handler runs), until the drive is done. An unexpected error ends every driver;
        :meth:`run` raises it."""
        lane = WorkerLane()
        try:
            self._steps(pipe, tally, lane, inline)
        except BaseException as exc:
            with self._lock:
                self._crash = self._crash or exc
            if primary:
                raise
        finally:
            self._drop_solo(lane)
            with self._lock:
                if not primary:
                    self._drivers -= 1
                    self._ended.notify_all()
                self._changed.notify_all()  # the other drivers see the end too

    def _steps(self, pipe: Pipeline, tally: dict[str, int], lane: WorkerLane, inline: bool) -> None:
        turned = False  # inline: this driver just ran a turn; it records before another
        while True:
            first_stop = turn = False
            with self._lock:
                while True:
                    if self._crash is not None or pipe.closed:
                        return
                    now = time.monotonic()
                    stopping = self._stopping.is_set()
                    if stopping and self._deadline is None:
                        self._deadline = now + self.shutdown_grace
                        first_stop = True
                        break
                    free = inline and not self._turn and not stopping and pipe.has_ready()
                    if free and not turned:
                        self._turn = turn = True  # no handler runs: this driver runs them
                        break
                    if self._wakeup.is_set():
                        pipe.claim_at = 0.0
                    step = pipe.next_step(now, stopping, self._deadline)
                    if isinstance(step, Step):
                        pipe.launch(step)
                        if step.claim:
                            self._wakeup.clear()  # a NOTIFY from now on ends the idle wait
                        break
                    if isinstance(step, GiveBack | Wait):
                        break
                    if free:  # nothing to record or claim: run the ready items after all
                        self._turn = turn = True
                        break
                    turned = False
                    self._changed.wait(step)
            turned = turn
            if turn:
                self._take_turn(pipe)
            elif first_stop:
                self._release_unstarted(pipe, tally)
            elif step is Wait.DONE:
                return
            elif step is Wait.ABANDON:
                with self._db_lock, self._lock:
                    abandoned = pipe.abandon_running()
                    pipe.closed = True  # a handler that returns now records nothing
                with self._report_lock:
                    self._report_abandoned(abandoned, tally)
                return
            elif isinstance(step, GiveBack):
                self._release_unstarted(pipe, tally, step.items, step.why)
            elif isinstance(step, Step):
                turned = self._run_step(pipe, step, lane, tally)

    def _run_step(
        self, pipe: Pipeline, step: Step, lane: WorkerLane, tally: dict[str, int]
    ) -> bool:
        """One pipeline transaction on this driver's connection; lands the step when done,
        whatever happens. True when this driver then ran a turn of its own (it records
        before it takes another)."""
        brought: int | None = None
        try:
            brought = self._record_and_claim(pipe, step, lane, tally)
        finally:
            with self._lock:
                pipe.landed(step)
                self._changed.notify_all()
        if brought is None:
            return False
        # the queue ran dry with items: run them first, then ask when to claim
        self._take_turn(pipe)
        with self._lock:
            if pipe.closed or self._stopping.is_set():  # no query after run() returned
                return True
        idle_for = self._idle_wait()
        with self._lock:
            if pipe.claim_at == math.inf:  # no NOTIFY started a claim meanwhile
                self._after_claim(pipe, step.claim, brought, idle_for)
        return True

    def _record_and_claim(
        self, pipe: Pipeline, step: Step, lane: WorkerLane, tally: dict[str, int]
    ) -> int | None:
        """Run ``step``. When this driver took the turn at what its claim brought (inline,
        the queue ran dry): how many items that was, and the caller runs the turn, then
        the idle wait; else None."""
        plans = self._plans(step.outcomes)
        operation = "record outcomes" if step.outcomes else "acquire"
        single = self._single_statement(step, plans, self._dialect)
        try:
            with self._transaction(operation, autocommit=single, lane=lane) as session:
                outcomes, claimed = self._flush(session, step.outcomes, plans, step.claim, single)
        except DatabaseError as exc:
            with self._lock:
                self._failures += 1
                given_up = self._flush_failed(pipe, step, self._failures, exc)
            lost = {done.item.id: "lost" for done in given_up}
            with self._report_lock:
                self._report_all(given_up, self._plans(given_up), lost, tally)
            return None
        with self._lock:
            self._failures = 0
            pipe.forget(done.item.id for done in step.outcomes)
            pipe.add(claimed)
            self._has_work.notify(len(claimed))
            # short: no other driver claims before the idle wait is known
            dry = pipe.claim_landed(step.claim, len(claimed))
            # Inline, with no turn running: this driver runs what it brought at once and
            # asks for the idle wait after (handing them to the other driver would wait
            # until this one's idle-wait query released the GIL: an idle worker's
            # enqueue-to-start latency).
            own_turn = dry and bool(claimed) and pipe.side_by_side and not self._turn
            if own_turn:
                self._turn = True
        if dry and not own_turn:  # the queue ran dry: wait until due or NOTIFY
            idle_for = self._idle_wait()
            with self._lock:
                self._after_claim(pipe, step.claim, len(claimed), idle_for)
        with self._report_lock:
            if claimed:
                tally["acquired"] = tally.get("acquired", 0) + len(claimed)
            self._report_all(step.outcomes, plans, outcomes, tally)
        return len(claimed) if own_turn else None
