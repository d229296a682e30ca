"""Acquire and outcomes: the claim (SKIP LOCKED), stale-lock reclaim, completion, failure,
heartbeat, release."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Insert,
    Integer,
    Select,
    String,
    Update,
    Uuid,
    and_,
    bindparam,
    column,
    func,
    insert,
    literal_column,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql

from retryqueue.models import (
    RetryItem,
    RetryStatus,
)
from retryqueue.statements._base import (
    _SYNC_OFF,
    HISTORY_TABLE,
    AnySelect,
    _status_is,
    after,
    now_expr,
)
from retryqueue.types import UTCDateTime, utc_now

CLAIM_COLUMNS = (
    RetryItem.id,
    RetryItem.event_id,
    RetryItem.event_type,
    RetryItem.channel_name,
    RetryItem.plugin_name,
    RetryItem.event_data,
    RetryItem.event_metadata,
    RetryItem.retry_count,
    RetryItem.max_retries,
    RetryItem.retry_delay_seconds,
    RetryItem.backoff_multiplier,
    RetryItem.priority,
    RetryItem.correlation_id,
    RetryItem.tags,
    RetryItem.created_at,
    RetryItem.next_retry_at,
    RetryItem.locked_by,
    RetryItem.locked_at,
    RetryItem.lease_token,
)

_FAILURE_COLUMNS = (
    RetryItem.id,
    RetryItem.event_id,
    RetryItem.retry_count,
    RetryItem.max_retries,
    RetryItem.retry_delay_seconds,
    RetryItem.backoff_multiplier,
    RetryItem.locked_by,
    RetryItem.locked_at,
)


def _stale(at: datetime | None, lock_timeout: float) -> list[ColumnElement[bool]]:
    return [
        _status_is(RetryStatus.PROCESSING),
        or_(RetryItem.locked_at < after(at, -lock_timeout), RetryItem.locked_at.is_(None)),
    ]


def select_stale(
    at: datetime | None,
    lock_timeout: float,
    limit: int,
    *,
    only_ids: Sequence[int] | None = None,
) -> AnySelect:
    """Processing items whose lock is older than ``lock_timeout`` — whoever holds them.

    Rows another transaction is working on are skipped, not waited for. ``only_ids``
    (MySQL) restricts the locking read to ids found by :func:`stale_ids`.
    """
    clauses = _stale(at, lock_timeout)
    if only_ids is not None:
        clauses.append(RetryItem.id.in_(list(only_ids)))
    return (
        select(*_FAILURE_COLUMNS)
        .where(*clauses)
        .order_by(RetryItem.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


def stale_ids(at: datetime | None, lock_timeout: float, limit: int) -> Select[int]:
    """Ids that look stale, read without locks (MySQL: then locked by id)."""
    return select(RetryItem.id).where(*_stale(at, lock_timeout)).order_by(RetryItem.id).limit(limit)


def reclaim_stale(item_id: int, at: datetime | None, lock_timeout: float) -> ColumnElement[bool]:
    """The guard under which a stale item may be reclaimed (still processing, still stale)."""
    return and_(
        RetryItem.id == item_id,
        _status_is(RetryStatus.PROCESSING),
        or_(RetryItem.locked_at < after(at, -lock_timeout), RetryItem.locked_at.is_(None)),
    )


Bound = tuple[Update, dict[str, Any]]
"""A statement built once (cached) and the parameters of one execution."""


def _now_param(server_clock: bool, name: str) -> ColumnElement[datetime]:
    return utc_now() if server_clock else bindparam(name, type_=UTCDateTime())


def circuit_key_of_item(per_event_type: bool) -> ColumnElement[str | None]:
    """An item's circuit breaker key: plugin_name, or ``plugin_name || ':' || event_type``.

    NULL for items without a plugin (no circuit guards them).
    """
    if not per_event_type:
        return RetryItem.plugin_name.expression
    return RetryItem.plugin_name + literal_column("':'") + RetryItem.event_type


def _circuit_filter(per_event_type: bool, only: Any = None, skip: Any = None) -> list[Any]:
    """The claim's circuit predicate: only ``only``'s items, or none of ``skip``'s (values
    or bind parameters); no predicate at all when neither is given."""
    key = circuit_key_of_item(per_event_type)
    if only is not None:
        return [key == only]
    if skip is not None:
        return [or_(RetryItem.plugin_name.is_(None), key.not_in(skip))]
    return []


def _claimable(now: Any, limit: Any, circuit: list[Any]) -> Select[int]:
    """Ids of claimable items, best first, locked with SKIP LOCKED: pending, due,
    unlocked and not expired, by priority DESC, next_retry_at, id (the claim index)."""
    return (
        select(RetryItem.id)
        .where(
            _status_is(RetryStatus.PENDING),
            RetryItem.next_retry_at <= now,
            RetryItem.locked_by.is_(None),
            RetryItem.expires_at > now,
            *circuit,
        )
        .order_by(RetryItem.priority.desc(), RetryItem.next_retry_at, RetryItem.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


def _claimed_values(now: Any, worker: Any, token: Any) -> dict[str, Any]:
    return {
        "status": RetryStatus.PROCESSING,
        "locked_by": worker,
        "locked_at": now,
        "lease_token": token,
        "last_attempted_at": now,
    }


@functools.cache
def _claim_template(server_clock: bool, keys: str | None = None, per_event: bool = False) -> Update:
    # Built once per clock kind and circuit filter: the hot path skips statement
    # construction and its cache-key computation, and the SQL text stays the same for every
    # batch. Without open circuits (keys=None) the claim carries no extra predicate.
    now = _now_param(server_clock, "claim_now")
    circuit = _circuit_filter(
        per_event,
        only=bindparam("claim_only", type_=String()) if keys == "only" else None,
        skip=bindparam("claim_skip", expanding=True, type_=String()) if keys == "skip" else None,
    )
    limit = bindparam("claim_limit", type_=Integer())
    candidates = (
        _claimable(now, limit, circuit)
        .cte("claimable")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    worker = bindparam("claim_worker", type_=String())
    token = bindparam("claim_token", type_=Uuid())
    return (
        update(RetryItem)
        .where(RetryItem.id == candidates.c.id)
        .values(**_claimed_values(now, worker, token))
        .returning(*CLAIM_COLUMNS)
        .execution_options(**_SYNC_OFF)
    )


def claim(
    at: datetime | None,
    worker_id: str,
    token: uuid.UUID,
    batch_size: int,
    *,
    skip_keys: Sequence[str] = (),
    only_key: str | None = None,
    per_event_type: bool = False,
) -> Bound:
    """Claim up to ``batch_size`` due items in priority order, in one round trip.

    Candidates: pending, due, unlocked and not expired, ordered by priority DESC, then
    next_retry_at, then id (served by ``idx_retry_queue_claim``); locked with SKIP LOCKED
    so concurrent workers never get the same row. RETURNING gives the claimed rows (in no
    particular order).

    Circuit breaker: items whose key (see :func:`circuit_key_of_item`) is in ``skip_keys``
    are left alone; ``only_key`` claims that key's items only (a half-open probe).
    """
    params: dict[str, Any] = {
        "claim_worker": worker_id,
        "claim_token": token,
        "claim_limit": batch_size,
    }
    if at is not None:
        params["claim_now"] = at
    keys: str | None = None
    if only_key is not None:
        keys, params["claim_only"] = "only", only_key
    elif skip_keys:
        keys, params["claim_skip"] = "skip", list(skip_keys)
    return _claim_template(at is None, keys, per_event_type and keys is not None), params


# ---------------------------------------------------------------------------------------
# Outcomes


def _owned(item_id: int, worker_id: str, token: uuid.UUID | None) -> ColumnElement[bool]:
    clauses = [
        RetryItem.id == item_id,
        _status_is(RetryStatus.PROCESSING),
        RetryItem.locked_by == worker_id,
    ]
    if token is not None:
        clauses.append(RetryItem.lease_token == token)
    return and_(*clauses)


def complete_owned(
    at: datetime | None, item_id: int, worker_id: str, token: uuid.UUID | None
) -> Update:
    """Mark an item completed if (and only if) this worker's lease still holds it."""
    return (
        update(RetryItem)
        .where(_owned(item_id, worker_id, token))
        .values(
            status=RetryStatus.COMPLETED,
            completed_at=now_expr(at),
            locked_by=None,
            locked_at=None,
            lease_token=None,
        )
        .returning(RetryItem.id, RetryItem.event_id, RetryItem.retry_count)
        .execution_options(**_SYNC_OFF)
    )


@functools.cache
def _complete_many_template(server_clock: bool) -> Update:
    return (
        update(RetryItem)
        .where(
            _status_is(RetryStatus.PROCESSING),
            RetryItem.locked_by == bindparam("done_worker", type_=String()),
            tuple_(RetryItem.id, RetryItem.lease_token).in_(
                bindparam("done_leases", expanding=True)
            ),
        )
        .values(
            status=RetryStatus.COMPLETED,
            completed_at=_now_param(server_clock, "done_now"),
            locked_by=None,
            locked_at=None,
            lease_token=None,
        )
        .returning(RetryItem.id, RetryItem.event_id, RetryItem.retry_count)
        .execution_options(**_SYNC_OFF)
    )


def complete_many(
    at: datetime | None, worker_id: str, leases: Sequence[tuple[int, uuid.UUID]]
) -> Bound:
    """Complete a batch of items in one statement; only rows whose lease still holds change.

    ``leases`` are (item id, lease token) pairs; RETURNING id, event_id, retry_count of
    the rows completed.
    """
    params: dict[str, Any] = {"done_worker": worker_id, "done_leases": list(leases)}
    if at is not None:
        params["done_now"] = at
    return _complete_many_template(at is None), params


@functools.cache
def _complete_and_record_template(server_clock: bool) -> Insert:
    done = _complete_many_template(server_clock).cte("done")
    timing = (
        func.unnest(
            bindparam("done_ids", type_=postgresql.ARRAY(BigInteger())),
            bindparam("done_ms", type_=postgresql.ARRAY(Integer())),
        )
        .table_valued(column("item_id", BigInteger()), column("ms", Integer()))
        .render_derived(name="timing")
    )
    history = HISTORY_TABLE.c
    rows = select(
        done.c.id,
        done.c.event_id,
        done.c.retry_count + 1,
        literal_column("'completed'"),
        bindparam("done_worker", type_=String()),
        timing.c.ms,
        _now_param(server_clock, "done_now"),
    ).select_from(done.outerjoin(timing, timing.c.item_id == done.c.id))
    return (
        insert(HISTORY_TABLE)
        .from_select(
            [
                history.retry_queue_id,
                history.event_id,
                history.attempt_number,
                history.status,
                history.worker_id,
                history.duration_ms,
                history.attempted_at,
            ],
            rows,
        )
        .returning(history.retry_queue_id)
    )


def complete_and_record(
    at: datetime | None,
    worker_id: str,
    leases: Sequence[tuple[int, uuid.UUID]],
    durations_ms: Sequence[int | None],
) -> tuple[Insert, dict[str, Any]]:
    """PostgreSQL: :func:`complete_many` and its history rows in one statement.

    ``WITH done AS (UPDATE … RETURNING …) INSERT INTO daz_retry_history SELECT … FROM
    done``: one round trip instead of two. RETURNING the ids completed (a lost lease is
    neither completed nor recorded). ``durations_ms`` go with ``leases``, in order.
    """
    _, params = complete_many(at, worker_id, leases)  # the same parameters, and more
    params["done_ids"] = [item_id for item_id, _ in leases]
    params["done_ms"] = list(durations_ms)
    return _complete_and_record_template(at is None), params


@functools.cache
def _complete_record_and_claim_template(server_clock: bool) -> AnySelect:
    recorded = _complete_and_record_template(server_clock).cte("recorded")
    claimed = _claim_template(server_clock).cte("claimed")
    completion = select(func.array_agg(recorded.c.retry_queue_id).label("completed_ids")).subquery(
        "completion"
    )
    return select(completion.c.completed_ids, claimed).select_from(
        completion.outerjoin(claimed, true())
    )


def complete_record_and_claim(
    at: datetime | None,
    worker_id: str,
    leases: Sequence[tuple[int, uuid.UUID]],
    durations_ms: Sequence[int | None],
    token: uuid.UUID,
    batch_size: int,
) -> tuple[AnySelect, dict[str, Any]]:
    """PostgreSQL: :func:`complete_and_record` and :func:`claim` (no circuit filter) in one
    statement, for a worker whose flush completes a batch and claims the next.

    ``WITH done AS (UPDATE …), recorded AS (INSERT INTO history … FROM done), claimable AS
    MATERIALIZED (SELECT … FOR UPDATE SKIP LOCKED), claimed AS (UPDATE … RETURNING …)
    SELECT completion.completed_ids, claimed.* FROM (SELECT array_agg(…) FROM recorded)
    AS completion LEFT JOIN claimed ON true``: always at least one row; every row carries
    the ids completed (NULL: none), and the claimed columns (all NULL: nothing claimed).
    The completed rows are processing and the claimed ones pending in the statement's
    snapshot, so the two UPDATEs never touch the same row.
    """
    _, params = complete_and_record(at, worker_id, leases, durations_ms)
    _, claim_params = claim(at, worker_id, token, batch_size)
    params.update(claim_params)
    return _complete_record_and_claim_template(at is None), params


def lock_owned(item_id: int, worker_id: str, token: uuid.UUID | None) -> AnySelect:
    """Read (and row-lock) an item this worker's lease holds, for a failure decision."""
    return select(*_FAILURE_COLUMNS).where(_owned(item_id, worker_id, token)).with_for_update()


def owned_guard(item_id: int, worker_id: str, token: uuid.UUID | None) -> ColumnElement[bool]:
    """The WHERE clause that proves a worker still owns an item."""
    return _owned(item_id, worker_id, token)


def apply_failure(
    guard: ColumnElement[bool],
    at: datetime | None,
    *,
    status: str,
    retry_count: int,
    delay: timedelta | None,
    error_message: str | None,
    error_code: str | None,
) -> Update:
    """Persist a failure decision (retry later, dead letter, failed) and drop the lock."""
    values: dict[str, Any] = {
        "status": RetryStatus(status),
        "retry_count": retry_count,
        "error_message": error_message,
        "last_error_code": error_code,
        "last_attempted_at": now_expr(at),
        "locked_by": None,
        "locked_at": None,
        "lease_token": None,
    }
    if delay is not None:
        values["next_retry_at"] = after(at, delay.total_seconds())
    return (
        update(RetryItem)
        .where(guard)
        .values(**values)
        .returning(RetryItem.id)
        .execution_options(**_SYNC_OFF)
    )


def insert_history(at: datetime | None) -> Insert:
    """INSERT of history rows (executemany); attempted_at is now on the chosen clock."""
    return insert(HISTORY_TABLE).values(attempted_at=now_expr(at))


def _held_by(
    worker_id: str, token: uuid.UUID | None, item_ids: Sequence[int] | None
) -> list[ColumnElement[bool]]:
    """Processing items locked by ``worker_id`` (under ``token``; among ``item_ids``)."""
    clauses = [_status_is(RetryStatus.PROCESSING), RetryItem.locked_by == worker_id]
    if token is not None:
        clauses.append(RetryItem.lease_token == token)
    if item_ids is not None:
        clauses.append(RetryItem.id.in_(item_ids))
    return clauses


def heartbeat(
    at: datetime | None,
    worker_id: str,
    token: uuid.UUID | None,
    item_ids: Sequence[int] | None,
) -> Update:
    """Refresh locked_at on the items a worker still holds; RETURNING their ids."""
    return (
        update(RetryItem)
        .where(*_held_by(worker_id, token, item_ids))
        .values(locked_at=now_expr(at))
        .returning(RetryItem.id)
        .execution_options(**_SYNC_OFF)
    )


def release(worker_id: str, token: uuid.UUID | None, item_ids: Sequence[int] | None) -> Update:
    """Give a worker's processing items back to pending, unchanged otherwise."""
    return (
        update(RetryItem)
        .where(*_held_by(worker_id, token, item_ids))
        .values(status=RetryStatus.PENDING, locked_by=None, locked_at=None, lease_token=None)
        .returning(RetryItem.id)
        .execution_options(**_SYNC_OFF)
    )
