"""The async front seen through blocking calls, so that one test suite drives both fronts.

``Blocking(target, loop)`` forwards every attribute of ``target``; a call that returns an
awaitable is run to completion on ``loop``, an async iterator becomes a plain iterator,
and arguments that are themselves ``Blocking`` are unwrapped. :class:`BlockingSessions`
mimics a ``sessionmaker`` (``sessions()`` and ``sessions.begin()``) over an
``async_sessionmaker``. Nothing is faked underneath: the calls reach the real
:class:`~retryqueue.aio.AsyncRetryQueue`, AsyncSession and async driver.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker


class Blocking:
    """``target``'s attributes, with coroutines run to completion on ``loop``."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._target = target
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute) or isinstance(attribute, type):
            return attribute
        return self._blocking(attribute)

    def _blocking(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            result = function(*map(unwrap, args), **{k: unwrap(v) for k, v in kwargs.items()})
            if inspect.isawaitable(result):
                return self._loop.run_until_complete(_resolve(result))
            if isinstance(result, AsyncIterator):
                return self._iterate(result)
            return result

        return call

    def _iterate(self, items: AsyncIterator[Any]) -> Iterator[Any]:
        while True:
            try:
                yield self._loop.run_until_complete(_next(items))
            except StopAsyncIteration:
                return


async def _resolve(awaitable: Any) -> Any:
    return await awaitable


async def _next(items: AsyncIterator[Any]) -> Any:
    return await anext(items)


def unwrap(value: Any) -> Any:
    """The async object behind a Blocking wrapper (other values unchanged)."""
    return value._target if isinstance(value, Blocking) else value


class BlockingSessions:
    """A sessionmaker look-alike handing out Blocking AsyncSessions."""

    def __init__(self, engine: AsyncEngine, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop
        self.maker = async_sessionmaker(engine, expire_on_commit=False)

    def __call__(self) -> Any:
        return self._entered(self.maker())

    def begin(self) -> Any:
        return self._entered(self.maker.begin())

    @contextmanager
    def _entered(self, manager: AbstractAsyncContextManager[AsyncSession]) -> Iterator[Any]:
        session = self.loop.run_until_complete(_enter(manager))
        try:
            yield Blocking(session, self.loop)
        except BaseException as exc:
            if not self.loop.run_until_complete(
                manager.__aexit__(type(exc), exc, exc.__traceback__)
            ):
                raise
        else:
            self.loop.run_until_complete(manager.__aexit__(None, None, None))


async def _enter(manager: AbstractAsyncContextManager[AsyncSession]) -> AsyncSession:
    return await manager.__aenter__()
