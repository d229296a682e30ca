"""Expiry sweep: pending items past ``expires_at`` become dead letters (code ``EXPIRED``),
so that nothing abandoned unrun disappears unseen."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, Select, Update, select, update

from retryqueue.models import RetryItem, RetryStatus
from retryqueue.statements._base import AnySelect, _status_is, now_expr

__all__ = ["dead_letter_expired", "expired_ids", "lock_expired"]


def _expired(at: datetime | None) -> list[ColumnElement[bool]]:
    return [_status_is(RetryStatus.PENDING), RetryItem.expires_at < now_expr(at)]


def expired_ids(at: datetime | None, limit: int) -> Select[int]:
    """Ids of pending items past expiry, by a plain read (MySQL's first step: no gap locks)."""
    return select(RetryItem.id).where(*_expired(at)).order_by(RetryItem.id).limit(limit)


def lock_expired(
    at: datetime | None, limit: int, *, only_ids: Sequence[int] | None = None
) -> AnySelect:
    """Pending items past expiry, locked (others' locked rows skipped) for dead-lettering."""
    clauses = _expired(at)
    if only_ids is not None:
        clauses.append(RetryItem.id.in_(list(only_ids)))
    return (
        select(RetryItem.id, RetryItem.event_id, RetryItem.retry_count)
        .where(*clauses)
        .order_by(RetryItem.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


def dead_letter_expired(
    item_ids: Sequence[int],
    at: datetime | None,
    *,
    error_code: str,
    message: str,
    error_fingerprint: str | None = None,
) -> Update:
    """Move these pending items to dead_letter with the expiry reason.

    ``last_attempted_at`` becomes now, so cleanup keeps them for the full retention.
    """
    return (
        update(RetryItem)
        .where(RetryItem.id.in_(list(item_ids)), _status_is(RetryStatus.PENDING))
        .values(
            status=RetryStatus.DEAD_LETTER,
            last_error_code=error_code,
            error_message=message,
            error_fingerprint=error_fingerprint,
            last_attempted_at=now_expr(at),
        )
        .execution_options(synchronize_session=False)
    )
