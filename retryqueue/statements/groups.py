"""Error groups: finished items per (error code, fingerprint), and fingerprint look-ups.

The groups of the dead letters read their partial covering index (rq0011); other
statuses and the fingerprint look-ups read the ``(status, error_fingerprint, id)`` index.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import (
    ColumnElement,
    Select,
    Text,
    Update,
    func,
    or_,
    select,
    type_coerce,
    update,
)

from retryqueue.models import RetryItem, RetryStatus
from retryqueue.statements._base import _SYNC_OFF, AnySelect, _status_in, _status_is

__all__ = [
    "error_samples",
    "error_tally",
    "failed_ids_after",
    "fingerprints_starting",
    "lock_failed_rows",
    "set_fingerprint",
]

_SEEN = func.coalesce(RetryItem.last_attempted_at, RetryItem.created_at)


def _statuses_are(statuses: Sequence[RetryStatus]) -> ColumnElement[bool]:
    """``status = 'x'`` for one status (so the dead letters' partial index applies),
    ``status IN (...)`` for several."""
    return _status_is(statuses[0]) if len(statuses) == 1 else _status_in(*statuses)


def error_tally(statuses: Sequence[RetryStatus]) -> AnySelect:
    """Items in ``statuses`` per (error code, fingerprint, plugin): count, first and last
    failure, and the newest id (whose message stands for the group).

    For the dead letters alone every column is in ``idx_retry_queue_dead_letter_groups``
    (PostgreSQL, SQLite; rq0011), a partial index: an index-only scan that never reads the
    table. The caller merges the plugins of a group and keeps the largest groups.
    """
    keys = (RetryItem.last_error_code, RetryItem.error_fingerprint, RetryItem.plugin_name)
    return (
        select(
            RetryItem.last_error_code.label("error_code"),
            RetryItem.error_fingerprint.label("fingerprint"),
            RetryItem.plugin_name,
            func.count().label("count"),
            func.min(_SEEN).label("first_seen"),
            func.max(_SEEN).label("last_seen"),
            func.max(RetryItem.id).label("newest_id"),
        )
        .where(_statuses_are(statuses))
        .group_by(*keys)
    )


def error_samples(item_ids: Sequence[int]) -> AnySelect:
    """The raw error messages (sealed or not: the caller opens them) of some items, by id:
    one sample per error group."""
    return select(RetryItem.id, type_coerce(RetryItem.error_message, Text())).where(
        RetryItem.id.in_(list(item_ids))
    )


def fingerprints_starting(prefix: str, statuses: Sequence[RetryStatus], limit: int) -> AnySelect:
    """The distinct fingerprints of items in ``statuses`` that start with ``prefix``
    (lower-case hex: no LIKE wildcard in it), at most ``limit``."""
    return (
        select(RetryItem.error_fingerprint)
        .where(_statuses_are(statuses), RetryItem.error_fingerprint.startswith(prefix))
        .distinct()
        .order_by(RetryItem.error_fingerprint)
        .limit(limit)
    )


def failed_ids_after(last_id: int, limit: int) -> Select[int]:
    """The ids of the next ``limit`` items after id ``last_id`` that carry an error (code
    or message), by id; a plain read (no lock: on MariaDB a locking scan would take
    next-key locks across the claims' rows)."""
    return (
        select(RetryItem.id)
        .where(
            RetryItem.id > last_id,
            or_(RetryItem.last_error_code.is_not(None), RetryItem.error_message.is_not(None)),
        )
        .order_by(RetryItem.id)
        .limit(limit)
    )


def lock_failed_rows(item_ids: Sequence[int]) -> AnySelect:
    """What the fingerprints of these items are made of, each row locked by primary key
    until the transaction ends (SKIP LOCKED: one another transaction holds is left out)."""
    return (
        select(
            RetryItem.id,
            RetryItem.last_error_code,
            RetryItem.error_message,
            RetryItem.error_fingerprint,
        )
        .where(RetryItem.id.in_(list(item_ids)))
        .order_by(RetryItem.id)
        .with_for_update(skip_locked=True)
    )


def set_fingerprint() -> Update:
    """Bulk UPDATE by primary key of items' fingerprints (executemany: ``{"id",
    "error_fingerprint"}`` per row)."""
    return update(RetryItem).execution_options(**_SYNC_OFF)
