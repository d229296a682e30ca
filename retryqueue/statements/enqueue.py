"""Enqueue: the bulk INSERT (idempotent on event_id), NOTIFY/LISTEN, next due time."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Float,
    Insert,
    Select,
    bindparam,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite

from retryqueue.models import (
    RetryItem,
    RetryStatus,
)
from retryqueue.statements._base import (
    QUEUE_TABLE,
    AnySelect,
    _now_plus_seconds,
    _status_is,
    has_returning,
    now_expr,
)
from retryqueue.types import UTCDateTime, utc_now

# Bulk enqueue on the database clock computes due and expiry times on the server per row.
_ROW_RUN_AT = "p_run_at"
_ROW_DELAY = "p_delay_s"
_ROW_EXPIRES_AT = "p_expires_at"
_ROW_TTL = "p_ttl_s"


def insert_items(dialect_name: str, at: datetime | None) -> Insert:
    """INSERT of queue rows, skipping rows whose event_id exists; RETURNING id, event_id.

    MySQL/MariaDB: no RETURNING; a duplicate event_id is a no-op (``ON DUPLICATE KEY
    UPDATE id = id``, which unlike ``INSERT IGNORE`` does not downgrade other errors to
    warnings) and the caller looks the ids up by event_id (see :func:`has_returning`).

    With a Python clock (``at`` given) every row carries ``created_at``, ``next_retry_at``
    and ``expires_at``. With the database clock, rows carry instead ``p_run_at`` or
    ``p_delay_s`` and ``p_expires_at`` or ``p_ttl_s`` (see :func:`server_time_params`).
    """
    table = QUEUE_TABLE
    stmt: Any
    if dialect_name == "postgresql":
        # No conflict target: the only unique index an insert can hit is event_id's (ids
        # come from the sequence), and a partitioned table (docs/partitioning.md) has none
        # to name; there a trigger skips a duplicate event_id just as DO NOTHING does.
        stmt = postgresql.insert(table).on_conflict_do_nothing()
    elif dialect_name == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=["event_id"])
    elif not has_returning(dialect_name):
        stmt = mysql.insert(table).on_duplicate_key_update(id=table.c.id)
    else:
        stmt = insert(table).prefix_with("IGNORE")
    if at is None:
        stmt = stmt.values(
            created_at=utc_now(),
            next_retry_at=func.coalesce(
                bindparam(_ROW_RUN_AT, type_=UTCDateTime()),
                _now_plus_seconds(bindparam(_ROW_DELAY, type_=Float())),
            ),
            expires_at=func.coalesce(
                bindparam(_ROW_EXPIRES_AT, type_=UTCDateTime()),
                _now_plus_seconds(bindparam(_ROW_TTL, type_=Float())),
            ),
        )
    if not has_returning(dialect_name):
        plain: Insert = stmt
        return plain
    result: Insert = stmt.returning(table.c.id, table.c.event_id)
    return result


def enqueued_by_event_ids(event_ids: Sequence[uuid.UUID]) -> Select[int, uuid.UUID]:
    """Ids of rows holding these event_ids, read with a lock (MySQL enqueue, no RETURNING).

    A locking read sees the newest committed rows, whatever the isolation level.
    """
    return existing_by_event_ids(event_ids).with_for_update()


def server_time_params(
    run_at: datetime | None, delay: float, expires_at: datetime | None, ttl: float
) -> dict[str, Any]:
    """The per-row time parameters of :func:`insert_items` on the database clock."""
    return {_ROW_RUN_AT: run_at, _ROW_DELAY: delay, _ROW_EXPIRES_AT: expires_at, _ROW_TTL: ttl}


def existing_by_event_ids(event_ids: Sequence[uuid.UUID]) -> Select[int, uuid.UUID]:
    """Ids of rows that already hold these event_ids."""
    return select(RetryItem.id, RetryItem.event_id).where(RetryItem.event_id.in_(event_ids))


NOTIFY_CHANNEL = "retryqueue"


def notify(channel: str = NOTIFY_CHANNEL) -> AnySelect:
    """PostgreSQL: wake listening workers when the enclosing transaction commits."""
    return select(func.pg_notify(channel, ""))


def listen(channel: str = NOTIFY_CHANNEL) -> Any:
    """PostgreSQL: subscribe the current connection to ``channel``."""
    if not channel.isidentifier():
        raise ValueError(f"invalid channel name {channel!r}")
    return text(f"LISTEN {channel}")


def next_due(at: datetime | None) -> AnySelect:
    """The earliest next_retry_at of pending items, and now (on the same clock)."""
    return select(
        func.min(RetryItem.next_retry_at).label("next_due"), now_expr(at).label("now")
    ).where(_status_is(RetryStatus.PENDING))
