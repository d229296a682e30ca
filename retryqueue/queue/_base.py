"""The base of :class:`~retryqueue.queue.RetryQueue`: its settings, its "now", and the
attempt bookkeeping (decide, apply, write history) that claims, failures and the
stale-lock sweep share.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from retryqueue import limits
from retryqueue import statements as sql
from retryqueue import validation as check
from retryqueue._rows import history_row
from retryqueue.clock import Clock, SystemClock
from retryqueue.policy import Decision, Outcome, RetryPolicy
from retryqueue.queue._support import _returning_rows

_SERVER_CLOCK_DIALECTS = frozenset({"postgresql", "mysql", "mariadb"})


class _QueueBase:
    """RetryQueue's settings and the bookkeeping its parts share (see
    :class:`~retryqueue.queue.RetryQueue`, which documents the parameters)."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        policy: RetryPolicy | None = None,
        max_payload_bytes: int = check.DEFAULT_MAX_PAYLOAD_BYTES,
        default_ttl: timedelta = timedelta(days=7),
        count_expired_locks: bool = True,
        notify: bool = True,
    ) -> None:
        self.clock = clock
        self.policy = policy or RetryPolicy()
        self.max_payload_bytes = check.bounded_int("max_payload_bytes", max_payload_bytes, low=1)
        self.default_ttl = timedelta(seconds=check.seconds("default_ttl", default_ttl))
        self.count_expired_locks = count_expired_locks
        self.notify = notify
        self.limit_presence = limits.LimitPresence()

    def __repr__(self) -> str:
        return f"RetryQueue(clock={self.clock!r}, policy={self.policy!r})"

    # -- time ----------------------------------------------------------------------------

    def now(self, session: Session) -> datetime | None:
        """The operation's "now": a datetime, or None to use the database server's clock."""
        if self.clock is not None:
            return self.clock.now()
        if session.get_bind().dialect.name in _SERVER_CLOCK_DIALECTS:
            return None  # the database server's clock
        return SystemClock().now()

    def calculate_next_retry(
        self,
        retry_count: int,
        retry_delay_seconds: float = 60,
        backoff_multiplier: float = 2.0,
    ) -> timedelta:
        """The backoff delay after ``retry_count`` earlier retries, under this queue's policy.

        With the defaults: 60 s, 120 s, 240 s, 480 s for retry_count 0, 1, 2, 3.
        """
        return self.policy.delay(retry_count, retry_delay_seconds, backoff_multiplier)

    # -- attempt bookkeeping ---------------------------------------------------------------

    def _decide(
        self,
        row: Any,
        *,
        retryable: bool,
        retry_after: timedelta | None,
        policy: RetryPolicy | None,
    ) -> Decision:
        return (policy or self.policy).decide(
            retry_count=row.retry_count,
            max_retries=row.max_retries,
            retry_delay_seconds=row.retry_delay_seconds,
            backoff_multiplier=float(row.backoff_multiplier),
            retryable=retryable,
            retry_after=retry_after,
        )

    @staticmethod
    def _apply(
        session: Session,
        guard: Any,
        at: datetime | None,
        decision: Decision,
        error_message: str | None,
        error_code: str | None,
        *,
        error_fingerprint: str | None = None,
    ) -> bool:
        stmt = sql.apply_failure(
            guard,
            at,
            status=decision.status,
            retry_count=decision.retry_count,
            delay=decision.delay,
            error_message=error_message,
            error_code=error_code,
            error_fingerprint=error_fingerprint,
        )
        return bool(_returning_rows(session, stmt))

    @classmethod
    def _write_attempt(
        cls, session: Session, at: datetime | None, row: Any, outcome: Outcome, **fields: Any
    ) -> None:
        """One history row for the attempt an acquired ``row`` (id, event_id, retry_count) made."""
        cls._write_history(
            session, at, [history_row(row.id, row.event_id, row.retry_count + 1, outcome, **fields)]
        )

    @staticmethod
    def _write_history(session: Session, at: datetime | None, rows: list[dict[str, Any]]) -> None:
        if rows:
            session.execute(sql.insert_history(at), rows)
