"""The asyncio worker's drain, beside the thread worker's (group ``async``).

A consumer process runs :class:`~retryqueue.worker.async_worker.AsyncWorker` with an ``async def``
no-op handler on asyncpg or psycopg's async mode; the harness counts finished rows in the
database, exactly as for the other drains.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import async_sessionmaker

from benchmarks import seed
from benchmarks.harness import Signals
from retryqueue import AsyncRetryQueue, create_async_engine

DRIVERS = {"asyncpg": "postgresql+asyncpg", "psycopg": "postgresql+psycopg"}


async def _noop(job: Any) -> None:
    """The no-op handler, on the event loop."""


async def _drain(signals: Signals, url: URL, batch_size: int) -> None:
    from retryqueue.worker.async_worker import AsyncWorker  # imported late: only consumers need it

    engine = create_async_engine(url, pool_size=4, max_overflow=4)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    worker = AsyncWorker(
        AsyncRetryQueue(), sessions, {seed.EVENT_TYPE: _noop}, batch_size=batch_size
    )
    async with engine.connect():
        pass  # connect before the clock starts
    loop = asyncio.get_running_loop()
    try:
        signals.ready.set()
        await loop.run_in_executor(None, signals.start.wait)
        run = asyncio.create_task(worker.run())
        await loop.run_in_executor(None, signals.stop.wait)
        worker.stop()
        await run
    finally:
        await engine.dispose()


def consume(signals: Signals, url: URL, driver: str, batch_size: int) -> None:
    """A worker process: drain with the asyncio worker until told to stop."""
    asyncio.run(_drain(signals, url.set(drivername=DRIVERS[driver]), batch_size))
