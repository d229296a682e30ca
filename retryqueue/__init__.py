"""retryqueue: a persistent retry queue for failed operations, as SQLAlchemy 2.x ORM code.

Quick use::

    from retryqueue import RetryQueue, create_engine, migrations
    engine = create_engine("sqlite:///retryqueue.db")
    migrations.upgrade(engine)
    queue = RetryQueue()
    with Session(engine) as session, session.begin():
        queue.enqueue(session, "payment.capture", {"order": 42}, priority=8)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from retryqueue.aio import AsyncRetryQueue
from retryqueue.breaker_policy import CircuitStatus
from retryqueue.circuits import CircuitBreaker
from retryqueue.clock import Clock, DatabaseClock, ManualClock, SystemClock
from retryqueue.engine import configure_sqlite, create_async_engine, create_engine
from retryqueue.errors import (
    DatabaseError,
    EnqueueRaceError,
    InvalidArgument,
    ItemNotFound,
    MigrationError,
    RetryQueueError,
)
from retryqueue.limits import KeyLimit
from retryqueue.models import Base, RetryHistory, RetryItem, RetryStatus, metadata
from retryqueue.policy import Decision, Outcome, RetryPolicy, backoff_delay, calculate_next_retry
from retryqueue.queue import NewItem, RetryQueue
from retryqueue.results import (
    Alert,
    CircuitEvent,
    CircuitState,
    ClaimedItem,
    CleanupResult,
    EnqueuedItem,
    ErrorGroup,
    Gate,
    HistoryEntry,
    HourlyCount,
    ItemFilter,
    ItemSnapshot,
    QueueStats,
    SuccessRate,
    Transition,
)

try:
    __version__ = version("retryqueue")
except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0"

__all__ = [
    "Alert",
    "AsyncRetryQueue",
    "Base",
    "CircuitBreaker",
    "CircuitEvent",
    "CircuitState",
    "CircuitStatus",
    "ClaimedItem",
    "CleanupResult",
    "Clock",
    "DatabaseClock",
    "DatabaseError",
    "Decision",
    "EnqueueRaceError",
    "EnqueuedItem",
    "ErrorGroup",
    "Gate",
    "HistoryEntry",
    "HourlyCount",
    "InvalidArgument",
    "ItemFilter",
    "ItemNotFound",
    "ItemSnapshot",
    "KeyLimit",
    "ManualClock",
    "MigrationError",
    "NewItem",
    "Outcome",
    "QueueStats",
    "RetryHistory",
    "RetryItem",
    "RetryPolicy",
    "RetryQueue",
    "RetryQueueError",
    "RetryStatus",
    "SuccessRate",
    "SystemClock",
    "Transition",
    "__version__",
    "backoff_delay",
    "calculate_next_retry",
    "configure_sqlite",
    "create_async_engine",
    "create_engine",
    "metadata",
]
