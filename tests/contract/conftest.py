"""The contract suite runs once per front and backend: the sync RetryQueue on a Session,
and the AsyncRetryQueue on an AsyncSession through each async driver.

The tests are written once against the sync API; for the async front, ``sessions`` and
``queue`` are :mod:`tests.support.blocking` views of a real async_sessionmaker and
AsyncRetryQueue, so every call goes through the async driver.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from retryqueue import ManualClock, RetryQueue, create_async_engine
from retryqueue.aio import AsyncRetryQueue
from tests.support.blocking import Blocking, BlockingSessions

# (backend, front): "sync", or the async driver that carries the async front.
VARIANTS = [
    ("sqlite", "sync"),
    ("postgresql", "sync"),
    ("mysql", "sync"),
    ("sqlite", "aiosqlite"),
    ("postgresql", "asyncpg"),
    ("postgresql", "psycopg-async"),
    ("mysql", "aiomysql"),
]
_ASYNC_DRIVER = {
    "aiosqlite": "sqlite+aiosqlite",
    "asyncpg": "postgresql+asyncpg",
    "psycopg-async": "postgresql+psycopg",
    "aiomysql": "mysql+aiomysql",
}


@pytest.fixture(params=VARIANTS, ids=[f"{b}-{f}" for b, f in VARIANTS])
def variant(request: pytest.FixtureRequest) -> tuple[str, str]:
    """One (backend, front) pair."""
    return tuple(request.param)  # type: ignore[return-value]


@pytest.fixture
def backend(variant: tuple[str, str]) -> str:
    """The variant's backend (overrides the root fixture's plain parametrisation)."""
    return variant[0]


@pytest.fixture
def front(variant: tuple[str, str]) -> str:
    """``sync`` or the async driver in use."""
    return variant[1]


@pytest.fixture
def loop(front: str) -> Iterator[asyncio.AbstractEventLoop | None]:
    """An event loop for the async front (None for the sync one)."""
    if front == "sync":
        yield None
        return
    made = asyncio.new_event_loop()
    yield made
    made.close()


@pytest.fixture
def sessions(engine: Engine, front: str, loop: asyncio.AbstractEventLoop | None) -> Iterator[Any]:
    """A sessionmaker, or its blocking view over an async_sessionmaker on the same DB."""
    if loop is None:
        yield sessionmaker(engine, expire_on_commit=False)
        return
    url = engine.url.set(drivername=_ASYNC_DRIVER[front])
    async_engine = (
        create_async_engine(url, pool_size=10, max_overflow=10)
        if (url.get_backend_name() != "sqlite")
        else create_async_engine(url)
    )
    yield BlockingSessions(async_engine, loop)
    loop.run_until_complete(async_engine.dispose())


def _front(queue: RetryQueue, loop: asyncio.AbstractEventLoop | None) -> Any:
    return queue if loop is None else Blocking(AsyncRetryQueue.wrapping(queue), loop)


def on_front(queue: RetryQueue, loop: asyncio.AbstractEventLoop | None) -> Any:
    """A queue a test configured itself, on the variant's front (the sync API is for
    Sessions only: an AsyncSession goes through AsyncRetryQueue)."""
    return _front(queue, loop)


@pytest.fixture
def queue(clock: ManualClock, loop: asyncio.AbstractEventLoop | None) -> Any:
    """A queue on the manual clock, on this variant's front."""
    return _front(RetryQueue(clock=clock), loop)


@pytest.fixture
def server_clock_queue(loop: asyncio.AbstractEventLoop | None) -> Any:
    """A queue on its default clock (the database's on PostgreSQL), on this front."""
    return _front(RetryQueue(), loop)
