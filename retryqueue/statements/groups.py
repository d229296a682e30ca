"""Error groups: finished items per (error code, fingerprint), and fingerprint look-ups.

Both read the ``(status, error_fingerprint, id)`` index of the queue table: a group is a
range of it, a fingerprint prefix too.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Text, func, select, type_coerce

from retryqueue.models import RetryItem, RetryStatus
from retryqueue.statements._base import AnySelect, _status_in

__all__ = ["error_groups", "fingerprints_starting", "plugins_of_groups"]

_SEEN = func.coalesce(RetryItem.last_attempted_at, RetryItem.created_at)


def error_groups(statuses: Sequence[RetryStatus], limit: int) -> AnySelect:
    """Items in ``statuses`` per (error code, fingerprint), largest first: count,
    first and last failure, one message (raw: sealed or not; the caller opens it)."""
    return (
        select(
            RetryItem.last_error_code.label("error_code"),
            RetryItem.error_fingerprint.label("fingerprint"),
            func.count().label("count"),
            func.min(_SEEN).label("first_seen"),
            func.max(_SEEN).label("last_seen"),
            func.max(type_coerce(RetryItem.error_message, Text())).label("sample_error"),
        )
        .where(_status_in(*statuses))
        .group_by(RetryItem.last_error_code, RetryItem.error_fingerprint)
        .order_by(func.count().desc(), RetryItem.error_fingerprint, RetryItem.last_error_code)
        .limit(limit)
    )


def plugins_of_groups(statuses: Sequence[RetryStatus]) -> AnySelect:
    """The distinct (error code, fingerprint, plugin) of the items in ``statuses``."""
    return (
        select(RetryItem.last_error_code, RetryItem.error_fingerprint, RetryItem.plugin_name)
        .where(_status_in(*statuses))
        .distinct()
    )


def fingerprints_starting(prefix: str, statuses: Sequence[RetryStatus], limit: int) -> AnySelect:
    """The distinct fingerprints of items in ``statuses`` that start with ``prefix``
    (lower-case hex: no LIKE wildcard in it), at most ``limit``."""
    return (
        select(RetryItem.error_fingerprint)
        .where(_status_in(*statuses), RetryItem.error_fingerprint.startswith(prefix))
        .distinct()
        .order_by(RetryItem.error_fingerprint)
        .limit(limit)
    )
