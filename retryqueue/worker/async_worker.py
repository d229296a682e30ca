"""The asyncio worker: the :class:`~retryqueue.worker.Worker`'s rounds as asyncio tasks.

A round is the same three steps, in the same transactions, with the same statements and
outcome rules (they live in :mod:`retryqueue.worker._base` and run on the
:class:`~sqlalchemy.ext.asyncio.AsyncSession` through ``run_sync``): acquire a batch;
run up to ``concurrency`` handlers at once; record the outcomes. ``async def`` handlers run
on the event loop; plain handlers run in threads (at most ``concurrency`` at once), so a
blocking handler never stalls the loop. Heartbeats are a task; on PostgreSQL a LISTEN task
(asyncpg or psycopg) wakes an idle worker on NOTIFY.

Stopping: :meth:`AsyncWorker.stop` (any thread), SIGTERM/SIGINT with
``run(install_signals=True)``, or cancelling the task running :meth:`AsyncWorker.run`.
Each stops acquiring, releases unstarted items at once and gives running handlers
``shutdown_grace`` to finish; a cancelled ``run()`` then re-raises ``CancelledError``.
A second cancellation abandons the running handlers at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any, TypeVar, Unpack

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from retryqueue import hooks
from retryqueue.aio import AsyncRetryQueue
from retryqueue.errors import DatabaseError, database_error
from retryqueue.queue import RetryQueue
from retryqueue.results import ClaimedItem
from retryqueue.worker._base import Job, RunReport, WorkerBase, WorkerOptions, job_for
from retryqueue.worker._batch import BatchState, Finished
from retryqueue.worker.async_listener import AsyncNotifyListener, supports_async_listen
from retryqueue.worker.routing import Handler, Route, Router

__all__ = ["AsyncWorker"]

T = TypeVar("T")


class _Batch(BatchState):
    """A batch on the event loop: no locks for the lists, a lock for its writes."""

    def __init__(self, items: list[ClaimedItem]) -> None:
        super().__init__(items)
        self.db_lock = asyncio.Lock()
        self.changed = asyncio.Event()
        self.runners: list[asyncio.Task[None]] = []

    def finish(self, done: Finished) -> None:
        super().finish(done)
        self.changed.set()


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Until ``event`` is set or ``timeout`` seconds pass."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout)


def _is_async(handler: Handler) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - a callable object's method
    )


class AsyncWorker(WorkerBase):
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
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch: _Batch | None = None

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
        return await self._process(_Batch(claimed))

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
        if self._batch is not None:
            self._batch.changed.set()

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # asyncio events belong to one loop: new ones per loop
            self._loop = loop
            self._stopping, self._wakeup = asyncio.Event(), asyncio.Event()
        if self._stop_requested.is_set():
            self._stopping.set()

    async def _rounds(self, install_signals: bool) -> RunReport:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if install_signals else ()
        previous = {signum: signal.getsignal(signum) for signum in signals}
        for signum in signals:
            loop.add_signal_handler(signum, self._on_signal, signum)
        self._log_started()
        listener = await self._start_listener()
        total, failures = RunReport(), 0
        try:
            while not self._stopping.is_set():
                self._wakeup.clear()  # a NOTIFY from now on ends the idle wait below
                await self._registry_round(self._registry_due())
                try:
                    report = await self.run_once()
                    failures = 0
                except DatabaseError as exc:
                    failures += 1
                    await _wait(self._stopping, self._outage_delay(failures, exc))
                    continue
                total += report
                if not report.acquired:
                    idle_for = await self._idle_wait()
                    self._log_idle(idle_for)
                    await _wait(self._wakeup, idle_for)
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

    async def _registry_round(self, step: str | None) -> None:
        """Register, heartbeat or leave the worker registry (one transaction)."""
        if step is None:
            return
        try:
            await self._in_transaction("worker registry", self._registry_step, step)
        except DatabaseError as exc:
            self._registry_done(step, exc)
        else:
            self._registry_done(step, None)

    def _on_signal(self, signum: int) -> None:
        self._log_signal(signal.Signals(signum).name)
        self.stop()

    # -- one batch -----------------------------------------------------------------------

    async def _process(self, batch: _Batch) -> RunReport:
        tally = {"acquired": len(batch.items)}
        self._batch = batch
        beat = asyncio.create_task(self._heartbeats(batch), name="retryqueue-heartbeat")
        batch.runners = [
            asyncio.create_task(self._run_handlers(batch), name=f"retryqueue-handler-{n}")
            for n in range(min(self.concurrency, len(batch.items)))
        ]
        try:
            await self._supervise(batch, tally)
        finally:
            beat.cancel()
            for task in batch.runners:
                task.cancel()  # only abandoned ones are still running
            await asyncio.gather(beat, *batch.runners, return_exceptions=True)
            self._batch = None
        return RunReport(**tally)

    async def _supervise(self, batch: _Batch, tally: dict[str, int]) -> None:
        deadline: float | None = None
        while not batch.done():
            if deadline is None and self._stopping.is_set():
                deadline = time.monotonic() + self.shutdown_grace
                await self._release_unstarted(batch, tally)
            batch.changed.clear()
            due = batch.outcomes_due(self._stopping.is_set(), deadline)
            if isinstance(due, float):
                await _wait(batch.changed, due)
            elif due:
                await self._record(batch, due, tally)
            elif deadline is not None and time.monotonic() >= deadline:
                async with batch.db_lock:
                    self._report_abandoned(batch.abandon_running(), tally)
                return

    async def _run_handlers(self, batch: _Batch) -> None:
        while (item := batch.next_item(self._stopping.is_set())) is not None:
            route = self.router.resolve(item.event_type, item.plugin_name)
            started = time.monotonic()
            error = None if route is None else await self._call(route, batch, item)
            batch.finish(Finished(item, route, error, time.monotonic() - started))

    async def _call(self, route: Route, batch: _Batch, item: ClaimedItem) -> BaseException | None:
        """Run one handler; the exception it raised, if any."""
        extend = partial(self._extend_one, batch, item.id)
        job = job_for(item, partial(self._extend_from_thread, extend), extend)
        try:
            if (hook := hooks.active) is None:  # instrumentation seam: retryqueue.hooks
                await _invoke(route.handler, job)
            else:
                with hook.attempt(item):
                    await _invoke(route.handler, job)
        except asyncio.CancelledError:
            raise  # abandoned at shutdown
        except BaseException as exc:  # a handler must never kill the worker
            return exc
        return None

    # -- writes ---------------------------------------------------------------------------

    async def _in_transaction(self, operation: str, step: Callable[..., T], *args: Any) -> T:
        """Run one of the shared transaction bodies on an AsyncSession, and commit."""
        try:
            async with self.sessions.begin() as session:
                return await session.run_sync(step, *args)
        except SQLAlchemyError as exc:  # commit/rollback errors are not wrapped by the queue
            raise database_error(operation, exc) from exc

    async def _record(self, batch: _Batch, finished: list[Finished], tally: dict[str, int]) -> None:
        plans = self._plans(finished)
        outcomes: dict[int, str] | None = None
        failing = 0
        while outcomes is None:
            async with batch.db_lock:
                try:
                    outcomes = await self._in_transaction(
                        "record outcomes", self._write_outcomes, finished, plans
                    )
                except DatabaseError as exc:
                    failing += 1
                    delay = self._recording_delay(batch, finished, failing, exc)
                    if delay is None:
                        outcomes = dict.fromkeys((f.item.id for f in finished), "lost")
                else:
                    delay = None
                if outcomes is not None:
                    batch.forget(f.item.id for f in finished)
            if delay is not None:
                await asyncio.sleep(delay)
        self._report_all(finished, plans, outcomes, tally)

    async def _release_unstarted(self, batch: _Batch, tally: dict[str, int]) -> None:
        unstarted = batch.take_unstarted()
        if not unstarted:
            return
        ids = [item.id for item in unstarted]
        released: int | DatabaseError
        async with batch.db_lock:
            batch.forget(ids)
            try:
                released = await self._in_transaction("release", self._release, unstarted)
            except DatabaseError as exc:
                released = exc
        self._report_released(ids, released, tally)

    # -- leases --------------------------------------------------------------------------

    async def _heartbeats(self, batch: _Batch) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self._renew_held(batch, None)
            except DatabaseError as exc:
                self._log_heartbeat_failed(exc)

    async def _extend_one(self, batch: _Batch, item_id: int) -> bool:
        return item_id in await self._renew_held(batch, [item_id])

    def _extend_from_thread(self, extend: Callable[[], Awaitable[bool]]) -> bool:
        """extend_lease() for a plain handler, which runs in a thread of its own."""
        assert self._loop is not None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run_coroutine_threadsafe(_awaited(extend), self._loop).result()
        raise RuntimeError("on the event loop, await job.extend_lease_async() instead")

    async def _renew_held(self, batch: _Batch, only: list[int] | None) -> set[int]:
        async with batch.db_lock:
            held = batch.held_items(only)
            if not held:
                return set()
            kept = await self._in_transaction("heartbeat", self._renew, held)
            self._note_renewal(batch, held, kept)
            return kept

    # -- waiting -------------------------------------------------------------------------

    async def _start_listener(self) -> AsyncNotifyListener | None:
        bind = self.listen_engine or self.sessions.kw.get("bind")
        if not self.listen or not isinstance(bind, AsyncEngine) or not supports_async_listen(bind):
            return None
        listener = AsyncNotifyListener(bind, self._wakeup)
        await listener.start()
        return listener

    async def _idle_wait(self) -> float:
        try:
            return self._idle_for(await self._in_transaction("seconds_until_claimable", self._due))
        except DatabaseError as exc:
            self._log_due_unknown(exc)
            return self.poll_interval


async def _invoke(handler: Handler, job: Job) -> None:
    """Await an ``async def`` handler on the loop, or run a plain one in a thread."""
    if _is_async(handler):
        await handler(job)  # type: ignore[misc]
    else:
        await _in_daemon_thread(handler, job)


async def _in_daemon_thread(handler: Handler, job: Job) -> None:
    """Run a plain handler in a thread of its own and await it.

    A daemon thread, as in the thread worker: a handler still running when the shutdown
    grace runs out must not keep the process from exiting (an executor's threads would).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    context = contextvars.copy_context()  # the handler sees the task's context (its span)

    def settle(error: BaseException | None) -> None:
        if done.done():  # the awaiting task was cancelled (abandoned at shutdown)
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def target() -> None:
        try:
            context.run(handler, job)
        except BaseException as exc:  # handed to the awaiting task
            error: BaseException | None = exc
        else:
            error = None
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=target, name="retryqueue-handler", daemon=True).start()
    await done


async def _awaited(make: Callable[[], Awaitable[T]]) -> T:
    return await make()
