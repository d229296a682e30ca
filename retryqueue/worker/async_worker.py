"""The asyncio worker: the :class:`~retryqueue.worker.Worker`'s pipeline as asyncio tasks.

The same pipeline (:mod:`retryqueue.worker._pipeline`: prefetch buffer, outcome buffer and
flush rules), the same transactions, statements and outcome rules (they live in
:mod:`retryqueue.worker._base` and run on the :class:`~sqlalchemy.ext.asyncio.AsyncSession`
through ``run_sync``): ``concurrency`` handler tasks and one heartbeat task live as long as
the run, the run's task (and on PostgreSQL one more: ``in_flight``) drives the database,
each on its own connection. ``async def`` handlers run
on the event loop; plain handlers run in threads (at most ``concurrency`` at once), so a
blocking handler never stalls the loop. Heartbeats are a task; on PostgreSQL a LISTEN task
(asyncpg or psycopg) wakes an idle worker on NOTIFY. Its transactions outside the flushes,
leases and idle wait are in :mod:`retryqueue.worker._async_io`, how it calls a handler in
:mod:`retryqueue.worker._async_calls`.

Stopping: :meth:`AsyncWorker.stop` (any thread), SIGTERM/SIGINT with
``run(install_signals=True)``, or cancelling the task running :meth:`AsyncWorker.run`.
Each stops acquiring, releases unstarted items at once and gives running handlers
``shutdown_grace`` to finish; a cancelled ``run()`` then re-raises ``CancelledError``.
A second cancellation abandons the running handlers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Mapping
from functools import partial
from typing import Unpack

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
)

from retryqueue import hooks
from retryqueue.aio import AsyncRetryQueue
from retryqueue.errors import DatabaseError
from retryqueue.queue import RetryQueue
from retryqueue.results import ClaimedItem
from retryqueue.worker._async_calls import Kinds, invoke
from retryqueue.worker._async_io import AsyncIO, AsyncLane, AsyncWakeup, wait_for_event
from retryqueue.worker._attempts import RunReport, job_for
from retryqueue.worker._batch import Finished
from retryqueue.worker._pipeline import GiveBack, Pipeline, Step, Wait
from retryqueue.worker._settings import WorkerOptions
from retryqueue.worker.routing import Handler, Route, Router

__all__ = ["AsyncWorker"]


class AsyncWorker(AsyncIO):
    """Runs handlers for queued items as asyncio tasks; see the module docstring.

    :param queue: a :class:`~retryqueue.aio.AsyncRetryQueue` (or the RetryQueue it wraps).
    :param sessions: an :class:`~sqlalchemy.ext.asyncio.async_sessionmaker`; the worker
        commits its own transactions. Its engine also LISTENs on PostgreSQL (asyncpg or
        psycopg) unless ``listen=False``, or ``listen_engine`` names a direct connection
        when ``sessions`` goes through PgBouncer.
    :param handlers: a :class:`~retryqueue.worker.routing.Router` or a mapping of event type to
        handler; handlers may be ``async def``.
    :param settings: the :class:`~retryqueue.worker.Worker`'s settings (batch_size,
        lock_timeout, poll_interval, concurrency, heartbeat_interval, shutdown_grace,
        listen, observers, worker_id), with the same defaults.
    """

    registry_kind = "asyncio"

    def __init__(
        self,
        queue: AsyncRetryQueue | RetryQueue,
        sessions: async_sessionmaker[AsyncSession],
        handlers: Router | Mapping[str, Handler],
        *,
        listen_engine: AsyncEngine | None = None,
        **settings: Unpack[WorkerOptions],
    ) -> None:
        super().__init__(
            queue.sync if isinstance(queue, AsyncRetryQueue) else queue, handlers, **settings
        )
        self.sessions = sessions
        self.listen_engine = listen_engine
        self._stop_requested = threading.Event()  # readable from any thread
        self._stopping = asyncio.Event()
        self._changed = asyncio.Event()  # the driver waits on it
        self._wakeup = AsyncWakeup(self._changed)
        self._has_work = asyncio.Event()  # idle handler tasks wait on it
        self._db_lock = asyncio.Lock()  # one lease renewal or release at a time
        self._landed = asyncio.Event()  # a pipeline transaction ended (renewals wait on it)
        self._failures = 0  # pipeline transactions failed in a row
        self._crash: BaseException | None = None  # a driver's unexpected error
        self._deadline: float | None = None  # the shutdown grace's end, once stopping
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kinds = Kinds()

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self, *, install_signals: bool = False) -> RunReport:
        """Process items until :meth:`stop` or cancellation; the totals of the whole run."""
        self._bind_loop()
        rounds = asyncio.create_task(self._rounds(install_signals), name="retryqueue-rounds")
        cancelled = False
        while True:
            try:
                report = await asyncio.shield(rounds)
                break
            except asyncio.CancelledError:
                if cancelled or rounds.done():  # a second cancel: abandon at once
                    rounds.cancel()
                    raise
                cancelled = True
                self._log_signal("cancellation")
                self.stop()
        if cancelled:
            raise asyncio.CancelledError
        return report

    async def run_once(self) -> RunReport:
        """Acquire one batch, run its handlers and record the outcomes.

        Returns what happened; an empty report if nothing was due or the worker is
        stopping. Raises :class:`~retryqueue.errors.DatabaseError` if acquiring fails.
        """
        self._bind_loop()
        if self._stopping.is_set():
            return RunReport()
        claimed = await self._in_transaction("acquire", self._claim)
        if not claimed:
            return RunReport()
        pipe = self._pipeline(self._dialect())
        pipe.claiming = False
        pipe.add(claimed)
        return await self._drive(pipe) + RunReport(acquired=len(claimed))

    def stop(self) -> None:
        """Stop acquiring; release unstarted items; let running handlers finish (grace).

        Safe to call from any thread and from signal handlers.
        """
        self._stop_requested.set()
        loop = self._loop
        if loop is None or loop.is_closed():
            self._stopping.set()
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._stop_now()
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing runs
            loop.call_soon_threadsafe(self._stop_now)

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop_requested.is_set()

    def _stop_now(self) -> None:
        self._stopping.set()
        self._wakeup.set()
        self._has_work.set()

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # asyncio events belong to one loop: new ones per loop
            self._loop = loop
            self._stopping, self._changed = asyncio.Event(), asyncio.Event()
            self._wakeup, self._has_work = AsyncWakeup(self._changed), asyncio.Event()
            self._db_lock, self._landed = asyncio.Lock(), asyncio.Event()
        if self._stop_requested.is_set():
            self._stopping.set()

    async def _rounds(self, install_signals: bool) -> RunReport:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if install_signals else ()
        previous = {signum: signal.getsignal(signum) for signum in signals}
        for signum in signals:
            loop.add_signal_handler(signum, self._on_signal, signum)
        self._log_started()
        await self._registry_round(self._registry_due())  # listed at once
        listener = await self._start_listener()
        try:
            total = await self._drive(self._pipeline(self._dialect()))
        finally:
            if listener is not None:
                await listener.close()
            for signum, handler in previous.items():
                loop.remove_signal_handler(signum)
                signal.signal(signum, handler)  # asyncio would leave the default behind
        if self._registered:  # not when abandoned by a second cancel: the row ages out
            await self._registry_round("leave")
        self._log_stopped()
        return total

    def _on_signal(self, signum: int) -> None:
        self._log_signal(signal.Signals(signum).name)
        self.stop()

    # -- the pipeline ------------------------------------------------------------------

    async def _drive(self, pipe: Pipeline) -> RunReport:
        """Run the pipeline until it is done: handler and heartbeat tasks for its life, and
        ``pipe.depth`` drivers, each running one pipeline transaction at a time on its own
        connection."""
        tally: dict[str, int] = {}
        beat = asyncio.create_task(self._heartbeat_loop(pipe), name="retryqueue-heartbeat")
        runners = [
            asyncio.create_task(self._handler_loop(pipe), name=f"retryqueue-handler-{n}")
            for n in range(self.concurrency)
        ]
        self._deadline = None
        drivers = [
            asyncio.create_task(self._supervise(pipe, tally), name=f"retryqueue-driver-{n}")
            for n in range(1, pipe.depth)
        ]
        try:
            await self._supervise(pipe, tally, primary=True)
        except BaseException:
            for task in drivers:
                task.cancel()  # cancelled (abandoned at once), or crashed
            raise
        finally:
            # Normally they end with this one (the drive is done for all, or a crash).
            await asyncio.gather(*drivers, return_exceptions=True)
            pipe.closed = True
            beat.cancel()
            for task in runners:
                task.cancel()  # idle ones, and abandoned ones still running a handler
            await asyncio.gather(beat, *runners, return_exceptions=True)
            crash, self._crash = self._crash, None
        if crash is not None:
            raise crash
        return RunReport(**tally)

    async def _supervise(
        self, pipe: Pipeline, tally: dict[str, int], primary: bool = False
    ) -> None:
        """A driver: take the pipeline's next step and run it, until the drive is done. An
        unexpected error ends every driver; :meth:`run` raises it."""
        lane = AsyncLane()
        try:
            await self._steps(pipe, tally, lane)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._crash = self._crash or exc
            if primary:
                raise
        finally:
            await self._drop_solo(lane)
            self._changed.set()  # the other drivers see the end too
            self._landed.set()

    async def _steps(self, pipe: Pipeline, tally: dict[str, int], lane: AsyncLane) -> None:
        while self._crash is None:
            now = time.monotonic()
            stopping = self._stopping.is_set()
            if stopping and self._deadline is None:
                self._deadline = now + self.shutdown_grace
                await self._release_unstarted(pipe, tally)
                continue
            if self._wakeup.is_set():
                pipe.claim_at = 0.0
            self._changed.clear()
            step = pipe.next_step(now, stopping, self._deadline)
            if step is Wait.DONE:
                return
            if step is Wait.ABANDON:
                async with self._db_lock:
                    self._report_abandoned(pipe.abandon_running(), tally)
                return
            if isinstance(step, GiveBack):
                await self._release_unstarted(pipe, tally, step.items, step.why)
            elif isinstance(step, Step):
                pipe.launch(step)
                if step.claim:
                    self._wakeup.clear()  # a NOTIFY from now on ends the idle wait
                try:
                    await self._run_step(pipe, step, lane, tally)
                finally:
                    pipe.landed(step)
                    self._changed.set()
                    self._landed.set()
            else:
                await wait_for_event(self._changed, step)

    async def _run_step(
        self, pipe: Pipeline, step: Step, lane: AsyncLane, tally: dict[str, int]
    ) -> None:
        """One pipeline transaction on this driver's connection."""
        plans = self._plans(step.outcomes)
        operation = "record outcomes" if step.outcomes else "acquire"
        single = self._single_statement(step, plans, self._dialect())
        try:
            if single:
                outcomes, claimed = await self._autocommitted(
                    operation, lane, self._flush, step.outcomes, plans, step.claim, single
                )
            else:
                outcomes, claimed = await self._in_transaction(
                    operation, self._flush, step.outcomes, plans, step.claim, single
                )
        except DatabaseError as exc:
            self._failures += 1
            given_up = self._flush_failed(pipe, step, self._failures, exc)
            lost = {done.item.id: "lost" for done in given_up}
            self._report_all(given_up, self._plans(given_up), lost, tally)
            return
        self._failures = 0
        pipe.forget(done.item.id for done in step.outcomes)
        pipe.add(claimed)
        if claimed:
            self._has_work.set()
            tally["acquired"] = tally.get("acquired", 0) + len(claimed)
        # short (the queue ran dry): no other driver claims before the idle wait is known;
        # wait until due or NOTIFY
        if pipe.claim_landed(step.claim, len(claimed)):
            self._after_claim(pipe, step.claim, len(claimed), await self._idle_wait())
        self._report_all(step.outcomes, plans, outcomes, tally)

    async def _handler_loop(self, pipe: Pipeline) -> None:
        """A handler task: run ready items until the pipeline closes."""
        while not pipe.closed:
            item = pipe.next_item(self._stopping.is_set())
            if item is None:
                self._has_work.clear()
                await self._has_work.wait()
                continue
            if pipe.claim_opened():
                self._changed.set()
            if pipe.finish(await self._attempt(pipe, item)):
                self._changed.set()

    async def _attempt(self, pipe: Pipeline, item: ClaimedItem) -> Finished:
        """The one place a handler attempt runs; its exception, if any, is the outcome."""
        route = self.router.resolve(item.event_type, item.plugin_name)
        started = time.monotonic()
        error = None if route is None else await self._call(route, pipe, item)
        return Finished(item, route, error, time.monotonic() - started)

    async def _call(self, route: Route, pipe: Pipeline, item: ClaimedItem) -> BaseException | None:
        """Run one handler; the exception it raised, if any."""
        extend = partial(self._extend_one, pipe, item.id)
        job = job_for(item, partial(self._extend_from_thread, extend), extend)
        try:
            if (hook := hooks.active) is None:  # instrumentation seam: retryqueue.hooks
                await invoke(route.handler, job, self._kinds)
            else:
                with hook.attempt(item):
                    await invoke(route.handler, job, self._kinds)
        except asyncio.CancelledError:
            raise  # abandoned at shutdown
        except BaseException as exc:  # a handler must never kill the worker
            return exc
        return None
