"""AsyncRetryQueue: the queue's operations on the caller's :class:`AsyncSession`.

There is one implementation of every operation, :class:`~retryqueue.queue.RetryQueue`.
The async front runs it through :meth:`AsyncSession.run_sync`, SQLAlchemy's bridge that
executes synchronous ORM code on the async session's connection (the driver's I/O is
awaited underneath, inside a greenlet). So both fronts send the very same statements from
:mod:`retryqueue.statements` and apply the same validation and retry decisions; nothing is
written twice and the two cannot drift. Each call costs one greenlet switch, the same
mechanism :meth:`AsyncSession.execute` itself uses for every statement.

Like the sync front, nothing here commits: the caller owns the transaction::

    async with sessions.begin() as session:          # an async_sessionmaker
        await queue.enqueue(session, "payment.capture", {"order": 42})
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from sqlalchemy.orm import Session

from retryqueue.clock import Clock
from retryqueue.policy import RetryPolicy
from retryqueue.queue import RetryQueue
from retryqueue.results import CleanupResult

if TYPE_CHECKING:  # importing it needs greenlet (the asyncio extras); the sync front must not
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["AsyncRetryQueue"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

_END: Any = object()


class _Awaitable(Generic[P, R]):
    """A :class:`RetryQueue` method offered on an :class:`AsyncSession`."""

    def __init__(self, method: Callable[Concatenate[RetryQueue, Session, P], R]) -> None:
        self._method = method
        self.__doc__ = method.__doc__  # help() and the docs show the one implementation's

    @overload
    def __get__(self, front: None, owner: type[Any]) -> _Awaitable[P, R]: ...

    @overload
    def __get__(
        self, front: AsyncRetryQueue, owner: type[Any]
    ) -> Callable[Concatenate[AsyncSession, P], Awaitable[R]]: ...

    def __get__(self, front: AsyncRetryQueue | None, owner: type[Any]) -> Any:
        if front is None:
            return self
        method, queue = self._method, front.sync

        @functools.wraps(method)
        async def call(session: AsyncSession, /, *args: P.args, **kwargs: P.kwargs) -> R:
            return await session.run_sync(lambda sync: method(queue, sync, *args, **kwargs))

        return call


async def _iterate(
    session: AsyncSession, start: Callable[[Session], Iterator[T]]
) -> AsyncIterator[T]:
    """Step a RetryQueue generator on the async session, one batch per await."""
    batches = await session.run_sync(start)
    while (batch := await session.run_sync(lambda _: next(batches, _END))) is not _END:
        yield batch


class AsyncRetryQueue:
    """The :class:`~retryqueue.queue.RetryQueue` operations for asyncio applications.

    Every method has the sync method's parameters and documentation, takes an
    :class:`~sqlalchemy.ext.asyncio.AsyncSession` in place of the Session, and is awaited.
    Build it with RetryQueue's keyword arguments, or around an existing RetryQueue::

        queue = AsyncRetryQueue(clock=ManualClock())
        queue = AsyncRetryQueue.wrapping(RetryQueue(policy=...))

    Engines: :func:`retryqueue.create_async_engine` (asyncpg or psycopg on PostgreSQL,
    aiosqlite on SQLite, aiomysql on MySQL/MariaDB).
    """

    def __init__(self, **settings: Any) -> None:
        self.sync = RetryQueue(**settings)

    @classmethod
    def wrapping(cls, queue: RetryQueue) -> AsyncRetryQueue:
        """The async front of an existing RetryQueue (same clock, policy and settings)."""
        front = cls.__new__(cls)
        front.sync = queue
        return front

    def __repr__(self) -> str:
        return f"AsyncRetryQueue({self.sync!r})"

    @property
    def clock(self) -> Clock | None:
        """The clock of the underlying RetryQueue (None: the database server's clock)."""
        return self.sync.clock

    @property
    def policy(self) -> RetryPolicy:
        """The retry policy of the underlying RetryQueue."""
        return self.sync.policy

    def calculate_next_retry(
        self, retry_count: int, retry_delay_seconds: float = 60, backoff_multiplier: float = 2.0
    ) -> timedelta:
        """See :meth:`RetryQueue.calculate_next_retry` (pure: nothing to await)."""
        return self.sync.calculate_next_retry(retry_count, retry_delay_seconds, backoff_multiplier)

    # Writing.
    now = _Awaitable(RetryQueue.now)
    enqueue = _Awaitable(RetryQueue.enqueue)
    enqueue_many = _Awaitable(RetryQueue.enqueue_many)
    acquire = _Awaitable(RetryQueue.acquire)
    complete = _Awaitable(RetryQueue.complete)
    complete_many = _Awaitable(RetryQueue.complete_many)
    complete_and_acquire = _Awaitable(RetryQueue.complete_and_acquire)
    fail = _Awaitable(RetryQueue.fail)
    record_failure = _Awaitable(RetryQueue.record_failure)
    heartbeat = _Awaitable(RetryQueue.heartbeat)
    release = _Awaitable(RetryQueue.release)
    requeue = _Awaitable(RetryQueue.requeue)
    purge = _Awaitable(RetryQueue.purge)
    cleanup = _Awaitable(RetryQueue.cleanup)
    expire = _Awaitable(RetryQueue.expire)

    # Rate limits and pauses.
    set_limit = _Awaitable(RetryQueue.set_limit)
    clear_limit = _Awaitable(RetryQueue.clear_limit)
    pause_key = _Awaitable(RetryQueue.pause_key)
    resume_key = _Awaitable(RetryQueue.resume_key)
    key_limits = _Awaitable(RetryQueue.key_limits)
    pause_item_key = _Awaitable(RetryQueue.pause_item_key)

    # Reading and monitoring.
    get = _Awaitable(RetryQueue.get)
    find = _Awaitable(RetryQueue.find)
    history = _Awaitable(RetryQueue.history)
    stats = _Awaitable(RetryQueue.stats)
    alerts = _Awaitable(RetryQueue.alerts)
    stuck = _Awaitable(RetryQueue.stuck)
    items_per_hour = _Awaitable(RetryQueue.items_per_hour)
    success_rate_by_event_type = _Awaitable(RetryQueue.success_rate_by_event_type)
    dead_letter_groups = _Awaitable(RetryQueue.dead_letter_groups)
    error_groups = _Awaitable(RetryQueue.error_groups)
    seconds_until_due = _Awaitable(RetryQueue.seconds_until_due)
    seconds_until_claimable = _Awaitable(RetryQueue.seconds_until_claimable)

    def iter_cleanup(
        self, session: AsyncSession, retention_days: float = 7, *, batch_size: int = 1000
    ) -> AsyncIterator[CleanupResult]:
        """See :meth:`RetryQueue.iter_cleanup`; ``async for`` over it, committing between."""
        return _iterate(
            session,
            lambda sync: self.sync.iter_cleanup(sync, retention_days, batch_size=batch_size),
        )

    def iter_rotate_keys(
        self, session: AsyncSession, *, batch_size: int = 500
    ) -> AsyncIterator[int]:
        """See :meth:`RetryQueue.iter_rotate_keys`; ``async for`` over it."""
        return _iterate(
            session, lambda sync: self.sync.iter_rotate_keys(sync, batch_size=batch_size)
        )

    def iter_refingerprint(
        self, session: AsyncSession, *, batch_size: int = 500
    ) -> AsyncIterator[tuple[int, int]]:
        """See :meth:`RetryQueue.iter_refingerprint`; ``async for`` over it."""
        return _iterate(
            session, lambda sync: self.sync.iter_refingerprint(sync, batch_size=batch_size)
        )
