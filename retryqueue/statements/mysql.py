"""Dialects without UPDATE/DELETE ... RETURNING (MySQL, MariaDB): the three-step forms."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Delete,
    Select,
    Table,
    Update,
    delete,
    select,
    update,
)
from sqlalchemy.sql.dml import ReturningDelete

from retryqueue.models import (
    RetryHistory,
    RetryItem,
)
from retryqueue.statements._base import (
    _MYSQL_FAMILY,
    _SYNC_OFF,
    AnySelect,
    now_expr,
    stamp_after,
    stamp_expr,
)
from retryqueue.statements.admin import _finished_batch, _history_batch
from retryqueue.statements.claims import CLAIM_COLUMNS, _circuit_filter, _claimable, _claimed_values
from retryqueue.statements.limits import KeyFilter, key_filter

# PostgreSQL and SQLite run the other shelves' statements as they are. MySQL has no
# RETURNING and cannot UPDATE/DELETE a table through a LIMITed subquery of itself, so there
# the same statement runs in three steps inside the caller's transaction: lock the matching
# ids (SELECT ... FOR UPDATE), apply the statement to exactly those ids, then read back what
# RETURNING would have given. The WHERE clause and the SET values are the statement's own.

_CLAIM_INDEX_HINT = "FORCE INDEX (idx_retry_queue_claim)"


@dataclass(frozen=True, slots=True)
class Emulation:
    """An UPDATE/DELETE ... RETURNING as lock ids, apply to those ids, read back."""

    lock: AnySelect
    """SELECT id ... FOR UPDATE (or SKIP LOCKED for claims): the rows to change."""
    apply: Callable[[Sequence[int]], Update | Delete]
    """The statement, without RETURNING, restricted to the locked ids."""
    read: Callable[[Sequence[int]], AnySelect] | None
    """The RETURNING columns of the changed rows (None for a DELETE: ids only)."""


def emulate_returning(stmt: Update | ReturningDelete[Any]) -> Emulation:
    """The three-step form of a single-table ``UPDATE``/``DELETE ... RETURNING``."""
    table = cast("Table", stmt.table)
    where = stmt.whereclause
    lock = select(table.c.id).order_by(table.c.id).with_for_update()
    if where is not None:
        lock = lock.where(where)
    returning = stmt._returning  # the columns RETURNING would have produced

    def apply(ids: Sequence[int]) -> Update | Delete:
        plain = stmt._generate()  # a copy, minus RETURNING
        plain._returning = ()
        restricted: Update | Delete = plain.where(table.c.id.in_(list(ids)))
        return restricted

    def read(ids: Sequence[int]) -> AnySelect:
        return select(*returning).where(table.c.id.in_(list(ids))).order_by(table.c.id)

    return Emulation(lock=lock, apply=apply, read=None if isinstance(stmt, Delete) else read)


def claim_emulated(
    at: datetime | None,
    worker_id: str,
    token: uuid.UUID,
    batch_size: int,
    *,
    lock_timeout: float,
    skip_keys: Sequence[str] = (),
    only_key: str | None = None,
    per_event_type: bool = False,
    limit_filter: KeyFilter | None = None,
) -> Emulation:
    """:func:`claim` in three steps: candidates with SKIP LOCKED, claim them, read them."""
    now = now_expr(at)
    circuit = _circuit_filter(per_event_type, only=only_key, skip=list(skip_keys) or None)
    if limit_filter is not None:
        circuit += key_filter(
            limit_filter.only_plugin,
            limit_filter.only_pair,
            list(limit_filter.skip_plugins) or None,
            list(limit_filter.skip_pairs) or None,
        )
    candidates = _claimable(now, batch_size, circuit)
    # Without the hint InnoDB may scan and filesort, locking every candidate before the
    # LIMIT applies: one worker then holds the whole backlog and the others find nothing.
    # Read in index order, the scan stops after batch_size unlocked matches.
    for name in _MYSQL_FAMILY:
        candidates = candidates.with_hint(RetryItem, _CLAIM_INDEX_HINT, name)

    def apply(ids: Sequence[int]) -> Update:
        return (
            update(RetryItem)
            .where(RetryItem.id.in_(list(ids)))
            .values(
                **_claimed_values(stamp_expr(at), stamp_after(at, lock_timeout), worker_id, token)
            )
            .execution_options(**_SYNC_OFF)
        )

    def read(ids: Sequence[int]) -> AnySelect:
        return select(*CLAIM_COLUMNS).where(RetryItem.id.in_(list(ids)))

    return Emulation(lock=candidates, apply=apply, read=read)


def finished_batch_ids(
    at: datetime | None,
    retention_seconds: float,
    limit: int,
    *,
    created_before: datetime | None = None,
) -> Select[int]:
    """The ids :func:`delete_finished_batch` would delete (MySQL: selected first)."""
    return _finished_batch(at, retention_seconds, limit, created_before)


def history_batch_ids(at: datetime | None, retention_seconds: float, limit: int) -> Select[int]:
    """The ids :func:`delete_history_batch` would delete (MySQL: selected first)."""
    return _history_batch(at, retention_seconds, limit).order_by(RetryHistory.id)


def delete_history_by_ids(history_ids: Sequence[int]) -> Delete:
    """Delete history rows by id."""
    return (
        delete(RetryHistory)
        .where(RetryHistory.id.in_(list(history_ids)))
        .execution_options(**_SYNC_OFF)
    )
