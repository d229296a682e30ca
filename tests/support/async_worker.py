"""The asyncio worker behind the thread worker's blocking surface, for the shared tests.

``BlockingAsyncWorker(queue, sessions, handlers, **settings)`` builds a real
:class:`~retryqueue.worker.async_worker.AsyncWorker` over an async engine on the same database as
``sessions`` (aiosqlite, psycopg's async mode, aiomysql). ``run()`` and ``run_once()``
block the calling thread on a fresh event loop, as ``Worker.run()`` does; ``stop()`` works
from any thread. Other attributes are the AsyncWorker's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import RetryQueue, create_async_engine
from retryqueue.worker import RunReport
from retryqueue.worker.async_worker import AsyncWorker

_ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+aiomysql",
}


def async_url(engine: Engine) -> URL:
    """The URL of ``engine``'s database with the async driver the tests use for it."""
    return engine.url.set(drivername=_ASYNC_DRIVERS[engine.url.get_backend_name()])


class BlockingAsyncWorker:
    """An AsyncWorker with Worker's blocking ``run``/``run_once``."""

    def __init__(
        self,
        queue: RetryQueue,
        sessions: sessionmaker[Session],
        handlers: Any,
        **settings: Any,
    ) -> None:
        bind = sessions.kw["bind"]
        assert isinstance(bind, Engine)
        self.url = async_url(bind)
        self.worker = AsyncWorker(queue, None, handlers, **settings)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.worker, name)

    def run(self, *, install_signals: bool = False) -> RunReport:
        return asyncio.run(
            self._on_engine(lambda: self.worker.run(install_signals=install_signals))
        )

    def run_once(self) -> RunReport:
        return asyncio.run(self._on_engine(self.worker.run_once))

    def stop(self) -> None:
        self.worker.stop()

    async def _on_engine(self, start: Callable[[], Awaitable[RunReport]]) -> RunReport:
        engine = create_async_engine(self.url)
        self.worker.sessions = async_sessionmaker(engine, expire_on_commit=False)
        try:
            return await start()
        finally:
            await engine.dispose()
