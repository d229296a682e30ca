"""Where "now" comes from.

On PostgreSQL (and MySQL) the queue uses the database's clock by default: due times, lock
expiry and backoff are computed in SQL from ``now()``, so a worker host whose clock is off
neither takes items early nor steals live locks. On SQLite, which lives on one host, the
Python clock is used. Tests inject a :class:`ManualClock` to make time jump.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from retryqueue.errors import InvalidArgument

__all__ = ["Clock", "DatabaseClock", "ManualClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of the current time for the queue's statements.

    ``now()`` returns an aware UTC datetime, or ``None`` to mean "the database's clock":
    the statements then use the server's ``now()`` instead of a bound value.
    """

    def now(self) -> datetime | None:
        """The current time, or None for the database's clock."""
        ...


class DatabaseClock:
    """Use the database server's clock (the default on PostgreSQL and MySQL)."""

    def now(self) -> None:
        """Always None: statements read the time on the server."""
        return None

    def __repr__(self) -> str:
        return "DatabaseClock()"


class SystemClock:
    """This host's clock, in UTC (the default on SQLite)."""

    def now(self) -> datetime:
        """The host's current UTC time."""
        return datetime.now(UTC)

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that moves only when told to, for tests.

    ``advance(60)`` or ``advance(timedelta(minutes=1))`` moves it forward; ``set(dt)``
    jumps to an aware datetime. Safe to share between threads.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._now = _require_aware(start) if start is not None else datetime.now(UTC)

    def now(self) -> datetime:
        """The clock's current time."""
        with self._lock:
            return self._now

    def advance(self, by: float | timedelta) -> datetime:
        """Move forward by seconds or a timedelta; returns the new time."""
        step = by if isinstance(by, timedelta) else timedelta(seconds=by)
        with self._lock:
            self._now += step
            return self._now

    def set(self, when: datetime) -> datetime:
        """Jump to ``when`` (timezone-aware); returns it in UTC."""
        with self._lock:
            self._now = _require_aware(when)
            return self._now

    def __repr__(self) -> str:
        return f"ManualClock({self.now().isoformat()})"


def _require_aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument("when", "a naive datetime; pass a timezone-aware one")
    return value.astimezone(UTC)
