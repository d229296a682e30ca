"""The asyncio worker's database side outside its flushes: its transactions (and each
driver's autocommitted lane), give-backs, the registry, lease renewals, the idle wait and
the NOTIFY wake-up. The base of :class:`~retryqueue.worker.async_worker.AsyncWorker`;
private (the thread worker's counterpart is :mod:`retryqueue.worker._threaded_io`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
)

from retryqueue.errors import DatabaseError, database_error
from retryqueue.results import ClaimedItem
from retryqueue.worker._base import WorkerBase
from retryqueue.worker._batch import Lane
from retryqueue.worker._pipeline import Pipeline
from retryqueue.worker.async_listener import AsyncNotifyListener, supports_async_listen

__all__ = ["AsyncIO", "AsyncLane", "AsyncWakeup", "wait_for_event"]

AsyncLane = Lane[AsyncConnection, AsyncSession]  # see Lane

T = TypeVar("T")


class AsyncWakeup(asyncio.Event):
    """The idle wake-up (NOTIFY, stop): an event that also wakes the pipeline's driver."""

    def __init__(self, changed: asyncio.Event) -> None:
        super().__init__()
        self._changed = changed

    def set(self) -> None:
        super().set()
        self._changed.set()


async def wait_for_event(event: asyncio.Event, timeout: float | None) -> None:
    """Until ``event`` is set or ``timeout`` seconds pass (``asyncio.timeout``: no task of
    its own per wait, as ``wait_for`` makes)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()


class AsyncIO(WorkerBase):
    """The asyncio worker's transactions, give-backs, leases and idle wait (the attributes
    below are set by :class:`~retryqueue.worker.async_worker.AsyncWorker`)."""

    sessions: async_sessionmaker[AsyncSession]
    listen_engine: AsyncEngine | None
    _changed: asyncio.Event  # the driver waits on it
    _wakeup: AsyncWakeup
    _db_lock: asyncio.Lock  # one lease renewal or release at a time
    _landed: asyncio.Event  # a pipeline transaction ended (renewals wait on it)
    _crash: BaseException | None
    _loop: asyncio.AbstractEventLoop | None

    # -- transactions --------------------------------------------------------------------

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

    def _dialect(self) -> str:
        engine = self.sessions.kw.get("bind")
        return engine.dialect.name if isinstance(engine, AsyncEngine) else ""

    async def _in_transaction(self, operation: str, step: Callable[..., T], *args: Any) -> T:
        """Run one of the shared transaction bodies on an AsyncSession, and commit."""
        try:
            async with self.sessions.begin() as session:
                return await session.run_sync(step, *args)
        except SQLAlchemyError as exc:  # commit/rollback errors are not wrapped by the queue
            raise database_error(operation, exc) from exc

    async def _autocommitted(
        self, operation: str, lane: AsyncLane, step: Callable[..., T], *args: Any
    ) -> T:
        """Run a single-statement body on the driver's (``lane``) autocommitted connection
        (no BEGIN/COMMIT)."""
        engine = self.sessions.kw.get("bind")
        if not isinstance(engine, AsyncEngine):
            return await self._in_transaction(operation, step, *args)
        try:
            session = await self._solo_session(lane, engine)
            try:
                result = await session.run_sync(step, *args)
            except BaseException:
                await self._drop_solo(lane)  # it may be broken: the next flush connects afresh
                raise
            # Kept open for the lane's next flush, as in the thread worker: on an
            # autocommitted connection its transaction is SQLAlchemy's bookkeeping only.
            if session.sync_session.identity_map:  # a quarantine loaded rows
                session.expunge_all()
            return result
        except SQLAlchemyError as exc:  # commit/rollback errors are not wrapped by the queue
            raise database_error(operation, exc) from exc

    async def _solo_session(self, lane: AsyncLane, engine: AsyncEngine) -> AsyncSession:
        """The session on the autocommitted connection a driver keeps for its
        single-statement flushes (both made once, not once per batch; the connection is
        returned when the drive ends)."""
        if lane.solo is None or lane.session is None:
            connection = await engine.connect()
            try:
                lane.solo = await connection.execution_options(isolation_level="AUTOCOMMIT")
            except BaseException:
                await connection.close()
                raise
            lane.session = self.sessions(bind=lane.solo)
        return lane.session

    @staticmethod
    async def _drop_solo(lane: AsyncLane) -> None:
        solo, session = lane.solo, lane.session
        lane.solo = lane.session = None
        if session is not None:
            with contextlib.suppress(SQLAlchemyError):
                await session.close()
        if solo is not None:
            with contextlib.suppress(SQLAlchemyError):
                await solo.close()

    async def _release_unstarted(
        self,
        pipe: Pipeline,
        tally: dict[str, int],
        given: list[ClaimedItem] | None = None,
        why: str = "unstarted",
    ) -> None:
        """Give back the items no handler started: all at shutdown, or those ``given``
        (overdue, or brought by a claim that was running at shutdown)."""
        unstarted = pipe.take_unstarted() if given is None else given
        if not unstarted:
            return
        ids = [item.id for item in unstarted]
        released: int | DatabaseError
        async with self._db_lock:
            pipe.forget(ids)
            try:
                released = await self._in_transaction("release", self._release, unstarted)
            except DatabaseError as exc:
                released = exc
        self._report_released(ids, released, tally, why)

    # -- leases --------------------------------------------------------------------------

    async def _heartbeat_loop(self, pipe: Pipeline) -> None:
        """The one periodic heartbeat of a running worker: renew every lease held."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            try:
                await self._renew_held(pipe, None)
            except DatabaseError as exc:
                self._log_heartbeat_failed(exc)
            await self._registry_round(self._registry_due())  # also while idle

    async def _extend_one(self, pipe: Pipeline, item_id: int) -> bool:
        return item_id in await self._renew_held(pipe, [item_id])

    def _extend_from_thread(self, extend: Callable[[], Awaitable[bool]]) -> bool:
        """extend_lease() for a plain handler, which runs in a thread of its own."""
        assert self._loop is not None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run_coroutine_threadsafe(_awaited(extend), self._loop).result()
        raise RuntimeError("on the event loop, await job.extend_lease_async() instead")

    async def _renew_held(self, pipe: Pipeline, only: list[int] | None) -> set[int]:
        """Renew leases once no pipeline transaction runs, keeping new ones out meanwhile
        (see :mod:`retryqueue.worker._pipeline`)."""
        async with self._db_lock:  # one renewal or release at a time
            pipe.renewing = True
            try:
                while not pipe.quiet() and self._crash is None:
                    self._landed.clear()
                    await self._landed.wait()
                held = pipe.held_items(only)
                if not held:
                    return set()
                kept = await self._in_transaction("heartbeat", self._renew, held)
                self._note_renewal(pipe, held, kept)
                return kept
            finally:
                pipe.renewing = False
                self._changed.set()

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


async def _awaited(make: Callable[[], Awaitable[T]]) -> T:
    return await make()
