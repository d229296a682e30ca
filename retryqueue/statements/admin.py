"""Administration: filters, requeue, purge, cleanup batches, key rotation."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Delete,
    Select,
    Update,
    and_,
    delete,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.sql.dml import ReturningDelete

from retryqueue.models import (
    TERMINAL_STATUSES,
    RetryCircuitEvent,
    RetryHistory,
    RetryHourlyOutcome,
    RetryItem,
    RetryStatus,
    RetryWorker,
)
from retryqueue.results import ItemFilter
from retryqueue.statements._base import (
    _SYNC_OFF,
    AnySelect,
    _status_in,
    _status_is,
    after,
    now_expr,
)
from retryqueue.types import UTCDateTime


def _filter_clauses(item_filter: ItemFilter) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = [RetryItem.status.in_(list(item_filter.statuses))]
    if item_filter.ids is not None:
        clauses.append(RetryItem.id.in_(list(item_filter.ids)))
    equal: list[tuple[Any, object]] = [
        (RetryItem.event_type, item_filter.event_type),
        (RetryItem.plugin_name, item_filter.plugin_name),
        (RetryItem.channel_name, item_filter.channel_name),
        (RetryItem.last_error_code, item_filter.error_code),
    ]
    clauses.extend(column == wanted for column, wanted in equal if wanted is not None)
    if item_filter.fingerprint == "none":
        clauses.append(RetryItem.error_fingerprint.is_(None))
    elif item_filter.fingerprint is not None:
        clauses.append(RetryItem.error_fingerprint == item_filter.fingerprint)
    ranges: list[tuple[Any, datetime | None, datetime | None]] = [
        (RetryItem.created_at, item_filter.created_after, item_filter.created_before),
        (RetryItem.last_attempted_at, item_filter.failed_after, item_filter.failed_before),
    ]
    for column, low, high in ranges:
        if low is not None:
            clauses.append(column >= literal(low, UTCDateTime()))
        if high is not None:
            clauses.append(column < literal(high, UTCDateTime()))
    return clauses


def filtered_ids(item_filter: ItemFilter, *, lock: bool = False) -> Select[int]:
    """Ids of the items an :class:`ItemFilter` selects, oldest first."""
    stmt = select(RetryItem.id).where(*_filter_clauses(item_filter)).order_by(RetryItem.id)
    if item_filter.limit is not None:
        stmt = stmt.limit(item_filter.limit)
    if lock:
        stmt = stmt.with_for_update(skip_locked=True)
    return stmt


def requeue_ids(
    at: datetime | None,
    item_ids: Sequence[int],
    statuses: Sequence[RetryStatus],
    *,
    reset_retries: bool,
    ttl_seconds: float,
) -> Update:
    """Move finished items back to pending, due now, without a retry deadline; RETURNING
    what history needs."""
    values: dict[str, Any] = {
        "status": RetryStatus.PENDING,
        "next_retry_at": now_expr(at),
        "expires_at": after(at, ttl_seconds),
        # A replay is the operator's decision to try again: the spent deadline goes.
        "retry_deadline": None,
        "completed_at": None,
        "locked_by": None,
        "locked_at": None,
        "lease_token": None,
    }
    if reset_retries:
        values["retry_count"] = 0
    return (
        update(RetryItem)
        .where(RetryItem.id.in_(item_ids), RetryItem.status.in_(list(statuses)))
        .values(**values)
        .returning(RetryItem.id, RetryItem.event_id, RetryItem.retry_count)
        .execution_options(**_SYNC_OFF)
    )


def purge_ids(item_ids: Sequence[int]) -> ReturningDelete[int]:
    """Delete the given items unless they are being processed (history is kept)."""
    return (
        delete(RetryItem)
        .where(RetryItem.id.in_(item_ids), ~_status_is(RetryStatus.PROCESSING))
        .returning(RetryItem.id)
        .execution_options(**_SYNC_OFF)
    )


def _finished_before(cutoff: ColumnElement[datetime]) -> ColumnElement[bool]:
    finished_at = func.coalesce(
        RetryItem.completed_at, RetryItem.last_attempted_at, RetryItem.created_at
    )
    return and_(_status_in(*TERMINAL_STATUSES), finished_at < cutoff)


def _created_before(moment: datetime | None) -> list[ColumnElement[bool]]:
    # On a partitioned table this confines a statement to the months it names (pruning).
    return [] if moment is None else [RetryItem.created_at < literal(moment, UTCDateTime())]


def _finished_batch(
    at: datetime | None, retention_seconds: float, limit: int, created_before: datetime | None
) -> Select[int]:
    return (
        select(RetryItem.id)
        .where(_finished_before(after(at, -retention_seconds)), *_created_before(created_before))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


def delete_finished_batch(
    at: datetime | None,
    retention_seconds: float,
    limit: int,
    *,
    created_before: datetime | None = None,
    once: bool = False,
) -> Delete:
    """Delete up to ``limit`` finished items older than the retention.

    ``once`` (PostgreSQL): the batch is a materialized CTE, see :func:`_materialized`.

    ``created_before`` restricts it to items created earlier (partitioned table: the
    months past the retention that could not be dropped).
    """
    batch = _finished_batch(at, retention_seconds, limit, created_before)
    return (
        delete(RetryItem)
        .where(RetryItem.id.in_(_doomed(batch, once)), *_created_before(created_before))
        .execution_options(**_SYNC_OFF)
    )


def _doomed(batch: Select[int], once: bool) -> Any:
    """The ids of a bounded batch, for ``id IN (…)``.

    ``once`` (PostgreSQL): as a ``MATERIALIZED`` CTE computed once. As a plain
    ``IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)`` the planner may run the subquery again
    for each outer row (a rescanned semi-join), each time taking n more: one "batch" of 2
    then deleted 5 rows. (Not on SQLite: its driver reports no rowcount for a statement
    that starts with WITH, and it has no such plan.)
    """
    if not once:
        return batch.scalar_subquery()
    return select(batch.cte("doomed").prefix_with("MATERIALIZED").c.id)


def expired_batch(at: datetime | None, limit: int) -> AnySelect:
    """Pending items past expires_at (they can never run), locked for archiving."""
    return (
        select(RetryItem.id, RetryItem.event_id, RetryItem.retry_count)
        .where(_status_is(RetryStatus.PENDING), RetryItem.expires_at < now_expr(at))
        .order_by(RetryItem.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


def delete_by_ids(item_ids: Sequence[int]) -> Delete:
    """Delete queue rows by id."""
    return delete(RetryItem).where(RetryItem.id.in_(item_ids)).execution_options(**_SYNC_OFF)


def _history_batch(at: datetime | None, retention_seconds: float, limit: int) -> Select[int]:
    return (
        select(RetryHistory.id)
        .where(RetryHistory.attempted_at < after(at, -retention_seconds))
        .limit(limit)
    )


def delete_history_batch(
    at: datetime | None, retention_seconds: float, limit: int, *, once: bool = False
) -> Delete:
    """Delete up to ``limit`` history rows older than the retention (``once``: see
    :func:`_doomed`)."""
    doomed = _doomed(_history_batch(at, retention_seconds, limit), once)
    return delete(RetryHistory).where(RetryHistory.id.in_(doomed)).execution_options(**_SYNC_OFF)


def cleanup_backlog(at: datetime | None, retention_seconds: float) -> AnySelect:
    """How many rows a cleanup would delete: finished items past the retention, expired
    pending items, history past twice the retention (one row of three counts; a progress
    bar's total, not a promise: workers change the figures meanwhile)."""
    finished = (
        select(func.count())
        .select_from(RetryItem)
        .where(_finished_before(after(at, -retention_seconds)))
        .scalar_subquery()
    )
    expired = (
        select(func.count())
        .select_from(RetryItem)
        .where(_status_is(RetryStatus.PENDING), RetryItem.expires_at < now_expr(at))
        .scalar_subquery()
    )
    history = (
        select(func.count())
        .select_from(RetryHistory)
        .where(RetryHistory.attempted_at < after(at, -2 * retention_seconds))
        .scalar_subquery()
    )
    return select(finished, expired, history)


def table_sizes() -> AnySelect:
    """Rows in the queue and in the history (key rotation rewrites both)."""
    return select(
        select(func.count()).select_from(RetryItem).scalar_subquery(),
        select(func.count()).select_from(RetryHistory).scalar_subquery(),
    )


def delete_circuit_events(at: datetime | None, retention_seconds: float) -> Delete:
    """Delete circuit breaker audit rows older than the retention (a small table: at once)."""
    return (
        delete(RetryCircuitEvent)
        .where(RetryCircuitEvent.occurred_at < after(at, -retention_seconds))
        .execution_options(**_SYNC_OFF)
    )


def delete_hourly(at: datetime | None, retention_seconds: float) -> Delete:
    """Delete the dashboard's rolled-up hours older than the retention (a small table: at
    once)."""
    return (
        delete(RetryHourlyOutcome)
        .where(RetryHourlyOutcome.hour < after(at, -retention_seconds))
        .execution_options(**_SYNC_OFF)
    )


def delete_silent_workers(at: datetime | None, silent_seconds: float) -> Delete:
    """Delete the worker registry's rows whose heartbeat is older than ``silent_seconds``:
    workers that stopped (their heartbeat was moved far back) or died. Workers never
    delete (the runtime role has no DELETE); cleanup, with the maintenance role, does."""
    return (
        delete(RetryWorker)
        .where(RetryWorker.heartbeat_at < after(at, -silent_seconds))
        .execution_options(**_SYNC_OFF)
    )


# ---------------------------------------------------------------------------------------
# Encryption at rest: key rotation rewrites the sealed columns in id order.


def sealed_queue_rows(after_id: int, limit: int) -> AnySelect:
    """The next ``limit`` queue rows after ``after_id``: id, event_data, error_message.

    Locked (FOR UPDATE) so that the rewrite cannot overwrite a concurrent outcome; rows
    another transaction holds are skipped (see :func:`queue_ids_between`) rather than
    waited for, so key rotation never waits in a lock cycle with a worker.
    """
    return (
        select(RetryItem.id, RetryItem.event_data, RetryItem.error_message)
        .where(RetryItem.id > after_id)
        .order_by(RetryItem.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


def queue_ids_between(after_id: int, up_to_id: int) -> Select[int]:
    """Ids of queue rows in ``(after_id, up_to_id]`` (unlocked: finds the skipped ones)."""
    return (
        select(RetryItem.id)
        .where(RetryItem.id > after_id, RetryItem.id <= up_to_id)
        .order_by(RetryItem.id)
    )


def sealed_queue_rows_by_id(item_ids: Sequence[int]) -> AnySelect:
    """These queue rows' id, event_data, error_message, locked (waiting for the lock)."""
    return (
        select(RetryItem.id, RetryItem.event_data, RetryItem.error_message)
        .where(RetryItem.id.in_(item_ids))
        .order_by(RetryItem.id)
        .with_for_update()
    )


def sealed_history_rows(after_id: int, limit: int) -> AnySelect:
    """The next ``limit`` history rows with an error message after ``after_id``."""
    return (
        select(RetryHistory.id, RetryHistory.error_message)
        .where(RetryHistory.id > after_id, RetryHistory.error_message.is_not(None))
        .order_by(RetryHistory.id)
        .limit(limit)
    )


def rewrite_queue_rows() -> Update:
    """Bulk UPDATE by primary key of event_data and error_message (executemany)."""
    return update(RetryItem).execution_options(**_SYNC_OFF)


def rewrite_history_rows() -> Update:
    """Bulk UPDATE by primary key of history error messages (executemany)."""
    return update(RetryHistory).execution_options(**_SYNC_OFF)
