"""PostgreSQL LISTEN for the asyncio worker, through the async driver.

The asyncio counterpart of :class:`~retryqueue.worker.listener.NotifyListener`: a task holds one
connection out of the async engine's pool (never returned to it) and sets an
:class:`asyncio.Event` for every ``NOTIFY retryqueue``. With asyncpg the driver's own
``add_listener`` subscribes (asyncpg only hands notifications to registered callbacks);
with psycopg 3 the ``LISTEN`` statement of :mod:`retryqueue.statements` runs and
``notifies()`` is awaited. A broken connection is re-opened with capped backoff, and the
event is set once more so that the worker re-checks the queue for what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from retryqueue.queue import NOTIFY_CHANNEL, listen_statement
from retryqueue.worker.listener import Listening, first_line, supports_listen

__all__ = ["AsyncNotifyListener", "supports_async_listen"]

logger = logging.getLogger("retryqueue.worker")

_CHECK_EVERY = 0.5


def supports_async_listen(engine: AsyncEngine) -> bool:
    """Whether this async engine can LISTEN: PostgreSQL through asyncpg or psycopg 3."""
    return supports_listen(engine.sync_engine, drivers=("asyncpg", "psycopg"))


class AsyncNotifyListener(Listening):
    """A task that sets ``wakeup`` whenever a NOTIFY arrives on ``channel``."""

    def __init__(
        self, engine: AsyncEngine, wakeup: asyncio.Event, channel: str = NOTIFY_CHANNEL
    ) -> None:
        super().__init__(engine, wakeup, channel)
        self._connection: AsyncConnection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """LISTEN now (no NOTIFY after this call is missed), then wait in a task.

        If the first connection fails, the task keeps trying; the worker polls meanwhile.
        """
        try:
            await self._connect()
        except Exception as exc:
            logger.warning("LISTEN failed, will retry: %s", first_line(exc))
        self._task = asyncio.create_task(self._run(), name="retryqueue-listener")

    async def close(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._disconnect()

    async def _connect(self) -> None:
        connection = await self._engine.connect()
        try:
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            raw = await connection.get_raw_connection()
            driver: Any = raw.driver_connection
            if self._engine.dialect.driver == "asyncpg":
                await driver.add_listener(self._channel, self._notified)
            else:
                await connection.execute(listen_statement(self._channel))
        except BaseException:
            await connection.invalidate()
            await connection.close()
            raise
        self._connection = connection
        self._listening()

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:  # never hand a LISTENing connection back to the pool
                await connection.invalidate()
            except Exception:
                logger.debug("invalidating the LISTEN connection failed", exc_info=True)
            finally:
                await connection.close()

    def _notified(self, *_: object) -> None:
        self._wakeup.set()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if self._connection is None:
                    await self._connect()
                    self._wakeup.set()  # anything enqueued while we were deaf
                failures = 0
                await self._wait_for_notifies()
            except Exception as exc:  # driver errors arrive unwrapped
                failures += 1
                await self._disconnect()
                await asyncio.sleep(self._lost(failures, exc))

    async def _wait_for_notifies(self) -> None:
        assert self._connection is not None
        raw = await self._connection.get_raw_connection()
        driver: Any = raw.driver_connection
        if self._engine.dialect.driver == "asyncpg":
            while not driver.is_closed():  # callbacks do the work; watch the connection
                await asyncio.sleep(_CHECK_EVERY)
            raise ConnectionError("the LISTEN connection closed")
        while True:
            async for _ in driver.notifies(timeout=_CHECK_EVERY, stop_after=1):
                self._wakeup.set()
