"""Outcomes: completion (alone, with its history rows, and with the next claim in one
statement), failure, heartbeat and release, each guarded by the lease token."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Insert,
    Integer,
    String,
    Text,
    Update,
    Uuid,
    and_,
    bindparam,
    cast,
    column,
    func,
    insert,
    literal_column,
    select,
    true,
    tuple_,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import NullType

from retryqueue.models import (
    RetryItem,
    RetryStatus,
)
from retryqueue.statements._base import (
    _SYNC_OFF,
    HISTORY_TABLE,
    AnySelect,
    _status_in,
    _status_is,
    after,
    now_expr,
    stamp_after,
    stamp_expr,
)
from retryqueue.statements.claims import (
    _FAILURE_COLUMNS,
    Bound,
    _claim_template,
    _now_param,
    claim,
)

# Outcomes from workers are keyed by the lease token alone: it is fresh for every claim, so
# a stale holder (even one reusing the worker id) never matches. Operators acting on an item
# by id use :func:`operator_guard` instead, explicitly.

_UNLOCKED: dict[str, Any] = {
    "locked_by": None,
    "locked_at": None,
    "lock_expires_at": None,
    "lease_token": None,
}
"""The SET that drops a lock."""


def owned_guard(item_id: int, token: uuid.UUID) -> ColumnElement[bool]:
    """The WHERE clause that proves a lease still holds an item: processing, this token."""
    return and_(
        RetryItem.id == item_id,
        _status_is(RetryStatus.PROCESSING),
        RetryItem.lease_token == token,
    )


def operator_guard(item_id: int) -> ColumnElement[bool]:
    """An operator's outcome by id (``force=True``): any pending or processing item,
    whoever holds it; the holder's later outcome is then refused."""
    return and_(RetryItem.id == item_id, _status_in(RetryStatus.PENDING, RetryStatus.PROCESSING))


def complete_owned(at: datetime | None, guard: ColumnElement[bool]) -> Update:
    """Mark an item completed if (and only if) ``guard`` (see :func:`owned_guard`) holds."""
    return (
        update(RetryItem)
        .where(guard)
        .values(status=RetryStatus.COMPLETED, completed_at=now_expr(at), **_UNLOCKED)
        .returning(RetryItem.id, RetryItem.event_id, RetryItem.retry_count)
        .execution_options(**_SYNC_OFF)
    )


@functools.cache
def _complete_many_template(server_clock: bool) -> Update:
    return (
        update(RetryItem)
        .where(
            _status_is(RetryStatus.PROCESSING),
            tuple_(RetryItem.id, RetryItem.lease_token).in_(
                bindparam("done_leases", expanding=True)
            ),
        )
        .values(
            status=RetryStatus.COMPLETED,
            completed_at=_now_param(server_clock, "done_now"),
            **_UNLOCKED,
        )
        .returning(RetryItem.id, RetryItem.event_id, RetryItem.retry_count)
        .execution_options(**_SYNC_OFF)
    )


def complete_many(at: datetime | None, leases: Sequence[tuple[int, uuid.UUID]]) -> Bound:
    """Complete a batch of items in one statement; only rows whose lease still holds change.

    ``leases`` are (item id, lease token) pairs; RETURNING id, event_id, retry_count of
    the rows completed. SQLite and MySQL; PostgreSQL runs :func:`complete_and_record`.
    """
    params: dict[str, Any] = {"done_leases": list(leases)}
    if at is not None:
        params["done_now"] = at
    return _complete_many_template(at is None), params


def _array_param(name: str, element: Any) -> Any:
    """A PostgreSQL array parameter sent as its text form (:func:`array_text`) and cast in
    the statement: the driver adapts one string instead of every element of a list."""
    return cast(bindparam(name, type_=Text()), postgresql.ARRAY(element))


def array_text(values: Iterable[int | uuid.UUID | None]) -> str:
    """The text form of a PostgreSQL array of integers or UUIDs (None is NULL): neither
    writes a quote, comma, brace or space, so nothing needs escaping."""
    return "{" + ",".join("NULL" if value is None else str(value) for value in values) + "}"


def _leases_given() -> Any:
    """``unnest(:done_ids, :done_tokens, :done_ms) AS lease(item_id, token, ms)``: the
    outcomes of a PostgreSQL flush as three array parameters. Arrays keep the statement's
    text the same for every batch size (no expanded IN lists to render, parse and prepare
    per size), and carry each item's timing to its history row."""
    return (
        func.unnest(
            _array_param("done_ids", BigInteger()),
            _array_param("done_tokens", Uuid()),
            _array_param("done_ms", Integer()),
        )
        .table_valued(
            column("item_id", BigInteger()), column("token", Uuid()), column("ms", Integer())
        )
        .render_derived(name="lease")
    )


@functools.cache
def _complete_and_record_template(server_clock: bool) -> Insert:
    lease = _leases_given()
    done = (
        update(RetryItem)
        .where(
            # By primary key, driven by the given leases (an `id = ANY(...)` here made
            # PostgreSQL scan the key for the ids and then loop over every lease for each
            # row: twice the time at 100 items). The status test is written so that it
            # cannot match the partial index of processing rows: given the choice,
            # PostgreSQL scanned that index, which holds every recently completed item's
            # dead entry until vacuum (0.6 ms of a 1.7 ms flush at 20k items, growing with
            # the churn).
            RetryItem.id == lease.c.item_id,
            RetryItem.lease_token == lease.c.token,
            cast(RetryItem.status, String()) == RetryStatus.PROCESSING.value,
        )
        .values(
            status=RetryStatus.COMPLETED,
            completed_at=_now_param(server_clock, "done_now"),
            **_UNLOCKED,
        )
        .returning(RetryItem.id, RetryItem.event_id, RetryItem.retry_count, lease.c.ms)
        .cte("done")
    )
    history = HISTORY_TABLE.c
    rows = select(
        done.c.id,
        done.c.event_id,
        done.c.retry_count + 1,
        literal_column("'completed'"),
        bindparam("done_worker", type_=String()),
        done.c.ms,
        _now_param(server_clock, "done_now"),
    )
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

    ``WITH done AS (UPDATE … FROM unnest(ids, tokens, ms) … RETURNING …) INSERT INTO
    daz_retry_history SELECT … FROM done``: one round trip instead of two. RETURNING the
    ids completed (a lost lease is neither completed nor recorded). ``durations_ms`` go
    with ``leases``, in order. An item passed twice is completed and recorded once (an
    UPDATE changes a row once, whatever its FROM list matches).
    """
    params: dict[str, Any] = {
        "done_ids": array_text([item_id for item_id, _ in leases]),
        "done_tokens": array_text([token for _, token in leases]),
        "done_ms": array_text(durations_ms),
        "done_worker": worker_id,
    }
    if at is not None:
        params["done_now"] = at
    return _complete_and_record_template(at is None), params


@functools.cache
def _complete_record_and_claim_template(server_clock: bool) -> AnySelect:
    recorded = _complete_and_record_template(server_clock).cte("recorded")
    claimed = _claim_template(server_clock).cte("claimed")
    given = func.unnest(_array_param("done_ids", BigInteger()))
    missing = (
        select(given.label("item_id"))
        .except_(select(recorded.c.retry_queue_id))
        .subquery("missing")
    )
    lost = select(func.array_agg(missing.c.item_id).label("lost_ids")).subquery("lost")
    # The claimed columns are read as the driver returns them (the driver's own
    # conversions; SQLAlchemy's result processing of these 19 columns cost more than the
    # fetch itself): claimed_item(..., driver_values=True) does the little left to do.
    as_driver_returns = [type_coerce(column_, NullType()) for column_ in claimed.c]
    return select(lost.c.lost_ids, *as_driver_returns).select_from(lost.outerjoin(claimed, true()))


def complete_record_and_claim(
    at: datetime | None,
    worker_id: str,
    leases: Sequence[tuple[int, uuid.UUID]],
    durations_ms: Sequence[int | None],
    token: uuid.UUID,
    batch_size: int,
    *,
    lock_timeout: float,
) -> tuple[AnySelect, dict[str, Any]]:
    """PostgreSQL: :func:`complete_and_record` and :func:`claim` (no circuit filter) in one
    statement, for a worker whose flush completes a batch and claims the next.

    ``WITH done AS (UPDATE …), recorded AS (INSERT INTO history … FROM done), claimable AS
    MATERIALIZED (SELECT … FOR UPDATE SKIP LOCKED), claimed AS (UPDATE … RETURNING …)
    SELECT lost.lost_ids, claimed.* FROM (SELECT array_agg(…) FROM (given ids EXCEPT
    recorded ids)) AS lost LEFT JOIN claimed ON true``: always at least one row; every row
    carries the ids given but not completed (their leases were lost; NULL: none, the usual
    case, so rows stay small), and the claimed columns (all NULL: nothing claimed). The
    completed rows are processing and the claimed ones pending in the statement's
    snapshot, so the two UPDATEs never touch the same row.
    """
    _, params = complete_and_record(at, worker_id, leases, durations_ms)
    _, claim_params = claim(at, worker_id, token, batch_size, lock_timeout=lock_timeout)
    params.update(claim_params)
    return _complete_record_and_claim_template(at is None), params


def lock_owned(guard: ColumnElement[bool], *, at: datetime | None = None) -> AnySelect:
    """Read (and row-lock) the item ``guard`` selects (a lease's), for a failure decision.

    With its ``expires_at``, ``retry_deadline`` and ``now`` (on the operation's clock), so
    that a retry due after expiry or the deadline can be refused.
    """
    return (
        select(*_FAILURE_COLUMNS, RetryItem.expires_at, now_expr(at).label("now"))
        .where(guard)
        .with_for_update()
    )


def apply_failure(
    guard: ColumnElement[bool],
    at: datetime | None,
    *,
    status: str,
    retry_count: int,
    delay: timedelta | None,
    error_message: str | None,
    error_code: str | None,
    error_fingerprint: str | None = None,
) -> Update:
    """Persist a failure decision (retry later, dead letter, failed) and drop the lock."""
    values: dict[str, Any] = {
        "status": RetryStatus(status),
        "retry_count": retry_count,
        "error_message": error_message,
        "last_error_code": error_code,
        "error_fingerprint": error_fingerprint,
        "last_attempted_at": now_expr(at),
        **_UNLOCKED,
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


def _held_by(token: uuid.UUID, item_ids: Sequence[int] | None) -> list[ColumnElement[bool]]:
    """Processing items held under the lease ``token`` (among ``item_ids``)."""
    clauses = [_status_is(RetryStatus.PROCESSING), RetryItem.lease_token == token]
    if item_ids is not None:
        clauses.append(RetryItem.id.in_(item_ids))
    return clauses


def heartbeat(
    at: datetime | None,
    token: uuid.UUID,
    item_ids: Sequence[int] | None,
    lock_timeout: float,
) -> Update:
    """Renew the lease ``token``'s locks: stamped now (the statement's time), expiring
    ``lock_timeout`` seconds later; RETURNING the ids still held."""
    return (
        update(RetryItem)
        .where(*_held_by(token, item_ids))
        .values(locked_at=stamp_expr(at), lock_expires_at=stamp_after(at, lock_timeout))
        .returning(RetryItem.id)
        .execution_options(**_SYNC_OFF)
    )


def release(token: uuid.UUID, item_ids: Sequence[int] | None) -> Update:
    """Give the lease ``token``'s processing items back to pending, unchanged otherwise."""
    return _release_where(_held_by(token, item_ids))


def release_forced(item_ids: Sequence[int]) -> Update:
    """An operator's release (``force=True``): the processing items in ``item_ids`` back to
    pending, whoever holds them; their holders' outcomes are then refused."""
    return _release_where([_status_is(RetryStatus.PROCESSING), RetryItem.id.in_(item_ids)])


def _release_where(where: list[ColumnElement[bool]]) -> Update:
    return (
        update(RetryItem)
        .where(*where)
        .values(status=RetryStatus.PENDING, **_UNLOCKED)
        .returning(RetryItem.id)
        .execution_options(**_SYNC_OFF)
    )
