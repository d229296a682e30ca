"""Every statement the library runs, and the only home of dialect differences.

Functions here build SQLAlchemy statements; they never execute them. ``at`` is the
operation's notion of "now": an aware datetime (bound as a parameter: the Python clock or
an injected test clock) or ``None`` for the database server's own clock.

Acquisition uses ``FOR UPDATE SKIP LOCKED`` (PostgreSQL, MySQL); SQLite ignores it and is
serialised by its single writer instead (see :mod:`retryqueue.engine`).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeAlias, cast

from sqlalchemy import (
    ColumnElement,
    Delete,
    Float,
    Insert,
    Integer,
    Select,
    String,
    Table,
    Update,
    Uuid,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import ReturningDelete
from sqlalchemy.sql.functions import FunctionElement

from retryqueue.models import (
    TERMINAL_STATUSES,
    RetryCircuit,
    RetryCircuitEvent,
    RetryHistory,
    RetryItem,
    RetryStatus,
)
from retryqueue.results import ItemFilter
from retryqueue.types import UTCDateTime, utc_now

__all__ = [
    "CIRCUIT_COLUMNS",
    "CLAIM_COLUMNS",
    "SNAPSHOT_COLUMNS",
    "Bound",
    "Emulation",
    "after",
    "alerts",
    "all_circuits",
    "apply_failure",
    "circuit_events",
    "circuit_key_of_item",
    "circuit_transition_counts",
    "circuits_by_key",
    "circuits_not_closed",
    "claim",
    "claim_emulated",
    "complete_owned",
    "database_now",
    "delete_by_ids",
    "delete_circuit_events",
    "delete_finished_batch",
    "delete_history_batch",
    "delete_history_by_ids",
    "emulate_returning",
    "enqueued_by_event_ids",
    "existing_by_event_ids",
    "expired_batch",
    "filtered_ids",
    "finished_batch_ids",
    "has_returning",
    "heartbeat",
    "history_batch_ids",
    "history_for_item",
    "insert_circuit_events",
    "insert_circuits",
    "insert_history",
    "insert_items",
    "items_per_hour",
    "lock_owned",
    "now_expr",
    "reclaim_stale",
    "release",
    "requeue_ids",
    "select_item",
    "select_stale",
    "stale_ids",
    "stats",
    "stuck",
    "success_rate_by_event_type",
    "update_circuit",
]

_SYNC_OFF = {"synchronize_session": False}

# A SELECT of any row shape (SQLAlchemy 2.1 types rows as a variadic generic).
AnySelect: TypeAlias = "Select[*tuple[Any, ...]]"

QUEUE_TABLE = cast("Table", RetryItem.__table__)
HISTORY_TABLE = cast("Table", RetryHistory.__table__)

# ---------------------------------------------------------------------------------------
# Time


class _now_plus_seconds(FunctionElement[datetime]):
    """The server's current time plus a number of seconds (a SQL expression)."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(_now_plus_seconds)
def _now_plus_default(element: _now_plus_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    raise NotImplementedError(
        f"the database clock is not supported on {compiler.dialect.name}; use SystemClock"
    )


@compiles(_now_plus_seconds, "postgresql")
def _now_plus_pg(element: _now_plus_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"(now() + make_interval(secs => {seconds}))"


@compiles(_now_plus_seconds, "mysql")
@compiles(_now_plus_seconds, "mariadb")
def _now_plus_mysql(element: _now_plus_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"TIMESTAMPADD(MICROSECOND, ROUND(({seconds}) * 1000000), UTC_TIMESTAMP(6))"


def _status_is(status: RetryStatus) -> ColumnElement[bool]:
    """``status = 'x'`` with the value inlined, not bound.

    The partial indexes name statuses in their predicates; PostgreSQL can use them for a
    prepared (generic) plan only when the status is a constant in the SQL text.
    """
    return RetryItem.status == literal_column(f"'{status.value}'", RetryItem.status.type)


def _status_in(*statuses: RetryStatus) -> ColumnElement[bool]:
    """``status IN ('x', 'y')`` with the values inlined (see :func:`_status_is`)."""
    return RetryItem.status.in_(
        [literal_column(f"'{status.value}'", RetryItem.status.type) for status in statuses]
    )


def now_expr(at: datetime | None) -> ColumnElement[datetime]:
    """``at`` as a bound parameter, or the server's ``now()`` when ``at`` is None."""
    if at is None:
        return utc_now()
    return literal(at, UTCDateTime())


def after(at: datetime | None, seconds: float) -> ColumnElement[datetime]:
    """The time ``seconds`` after now (negative: before), on the chosen clock."""
    if at is None:
        return _now_plus_seconds(literal(float(seconds), Float()))
    return literal(at + timedelta(seconds=seconds), UTCDateTime())


class _hour_bucket(FunctionElement[datetime]):
    """The start of the UTC hour a timestamp falls in."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(_hour_bucket)
def _hour_bucket_sqlite(element: _hour_bucket, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"strftime('%Y-%m-%d %H:00:00.000000', {column})"


@compiles(_hour_bucket, "postgresql")
def _hour_bucket_pg(element: _hour_bucket, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"date_trunc('hour', ({column}) AT TIME ZONE 'UTC')"


@compiles(_hour_bucket, "mysql")
@compiles(_hour_bucket, "mariadb")
def _hour_bucket_mysql(element: _hour_bucket, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"CAST(DATE_FORMAT({column}, '%%Y-%%m-%%d %%H:00:00') AS DATETIME(6))"


# ---------------------------------------------------------------------------------------
# Enqueue

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


# ---------------------------------------------------------------------------------------
# Acquire

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


def heartbeat(
    at: datetime | None,
    worker_id: str,
    token: uuid.UUID | None,
    item_ids: Sequence[int] | None,
) -> Update:
    """Refresh locked_at on the items a worker still holds; RETURNING their ids."""
    clauses = [_status_is(RetryStatus.PROCESSING), RetryItem.locked_by == worker_id]
    if token is not None:
        clauses.append(RetryItem.lease_token == token)
    if item_ids is not None:
        clauses.append(RetryItem.id.in_(item_ids))
    return (
        update(RetryItem)
        .where(*clauses)
        .values(locked_at=now_expr(at))
        .returning(RetryItem.id)
        .execution_options(**_SYNC_OFF)
    )


def release(worker_id: str, token: uuid.UUID | None, item_ids: Sequence[int] | None) -> Update:
    """Give a worker's processing items back to pending, unchanged otherwise."""
    clauses = [_status_is(RetryStatus.PROCESSING), RetryItem.locked_by == worker_id]
    if token is not None:
        clauses.append(RetryItem.lease_token == token)
    if item_ids is not None:
        clauses.append(RetryItem.id.in_(item_ids))
    return (
        update(RetryItem)
        .where(*clauses)
        .values(status=RetryStatus.PENDING, locked_by=None, locked_at=None, lease_token=None)
        .returning(RetryItem.id)
        .execution_options(**_SYNC_OFF)
    )


# ---------------------------------------------------------------------------------------
# Dialects without UPDATE/DELETE ... RETURNING (MySQL, MariaDB)
#
# PostgreSQL and SQLite run the statements above as they are. MySQL has no RETURNING and
# cannot UPDATE/DELETE a table through a LIMITed subquery of itself, so there the same
# statement runs in three steps inside the caller's transaction: lock the matching ids
# (SELECT ... FOR UPDATE), apply the statement to exactly those ids, then read back what
# RETURNING would have given. The WHERE clause and the SET values are the statement's own.

_MYSQL_FAMILY = frozenset({"mysql", "mariadb"})
_CLAIM_INDEX_HINT = "FORCE INDEX (idx_retry_queue_claim)"


def has_returning(dialect_name: str) -> bool:
    """Whether the queue's UPDATE/DELETE ... RETURNING statements run as they are."""
    return dialect_name not in _MYSQL_FAMILY


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
    skip_keys: Sequence[str] = (),
    only_key: str | None = None,
    per_event_type: bool = False,
) -> Emulation:
    """:func:`claim` in three steps: candidates with SKIP LOCKED, claim them, read them."""
    now = now_expr(at)
    circuit = _circuit_filter(per_event_type, only=only_key, skip=list(skip_keys) or None)
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
            .values(**_claimed_values(now, worker_id, token))
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


# ---------------------------------------------------------------------------------------
# Administration: filters, requeue, cleanup


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
    """Move finished items back to pending, due now; RETURNING what history needs."""
    values: dict[str, Any] = {
        "status": RetryStatus.PENDING,
        "next_retry_at": now_expr(at),
        "expires_at": after(at, ttl_seconds),
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
) -> Delete:
    """Delete up to ``limit`` finished items older than the retention.

    ``created_before`` restricts it to items created earlier (partitioned table: the
    months past the retention that could not be dropped).
    """
    doomed = _finished_batch(at, retention_seconds, limit, created_before).scalar_subquery()
    return (
        delete(RetryItem)
        .where(RetryItem.id.in_(doomed), *_created_before(created_before))
        .execution_options(**_SYNC_OFF)
    )


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


def delete_history_batch(at: datetime | None, retention_seconds: float, limit: int) -> Delete:
    """Delete up to ``limit`` history rows older than the retention."""
    doomed = _history_batch(at, retention_seconds, limit).scalar_subquery()
    return delete(RetryHistory).where(RetryHistory.id.in_(doomed)).execution_options(**_SYNC_OFF)


def delete_circuit_events(at: datetime | None, retention_seconds: float) -> Delete:
    """Delete circuit breaker audit rows older than the retention (a small table: at once)."""
    return (
        delete(RetryCircuitEvent)
        .where(RetryCircuitEvent.occurred_at < after(at, -retention_seconds))
        .execution_options(**_SYNC_OFF)
    )


# ---------------------------------------------------------------------------------------
# Reading and monitoring

SNAPSHOT_COLUMNS = (
    RetryItem.id,
    RetryItem.event_id,
    RetryItem.event_type,
    RetryItem.channel_name,
    RetryItem.plugin_name,
    RetryItem.status,
    RetryItem.priority,
    RetryItem.retry_count,
    RetryItem.max_retries,
    RetryItem.error_message,
    RetryItem.last_error_code,
    RetryItem.created_at,
    RetryItem.next_retry_at,
    RetryItem.last_attempted_at,
    RetryItem.completed_at,
    RetryItem.expires_at,
    RetryItem.locked_by,
    RetryItem.locked_at,
    RetryItem.correlation_id,
    RetryItem.tags,
)


def select_item(item_id: int) -> AnySelect:
    """One item's snapshot columns."""
    return select(*SNAPSHOT_COLUMNS).where(RetryItem.id == item_id)


def select_filtered(item_filter: ItemFilter) -> AnySelect:
    """Snapshot columns of the items a filter selects, oldest first."""
    stmt = select(*SNAPSHOT_COLUMNS).where(*_filter_clauses(item_filter)).order_by(RetryItem.id)
    if item_filter.limit is not None:
        stmt = stmt.limit(item_filter.limit)
    return stmt


def history_for_item(item_id: int) -> Select[RetryHistory]:
    """An item's history rows in attempt order."""
    return (
        select(RetryHistory)
        .where(RetryHistory.retry_queue_id == item_id)
        .order_by(RetryHistory.attempted_at, RetryHistory.id)
    )


def stats() -> AnySelect:
    """Counts per (status, event_type, plugin_name)."""
    return (
        select(
            RetryItem.status,
            RetryItem.event_type,
            RetryItem.plugin_name,
            func.count().label("count"),
            func.avg(RetryItem.retry_count).label("avg_retry_count"),
            func.max(RetryItem.retry_count).label("max_retry_count"),
            func.min(RetryItem.created_at).label("oldest_created_at"),
            func.max(RetryItem.created_at).label("newest_created_at"),
            func.count(RetryItem.locked_by).label("locked_count"),
        )
        .group_by(RetryItem.status, RetryItem.event_type, RetryItem.plugin_name)
        .order_by(RetryItem.status, RetryItem.event_type, RetryItem.plugin_name)
    )


ALERT_DEAD_LETTER = "dead letter: manual intervention required"
ALERT_STALE_LOCK = "stale lock"
ALERT_APPROACHING_LIMIT = "approaching retry limit"
ALERT_OLD_PENDING = "old pending item"


def alerts(
    at: datetime | None,
    *,
    stale_lock_seconds: float = 3600,
    old_pending_seconds: float = 86400,
) -> AnySelect:
    """Items needing attention, each with its most urgent reason."""
    active = _status_in(RetryStatus.PENDING, RetryStatus.PROCESSING)
    reason = case(
        (_status_is(RetryStatus.DEAD_LETTER), ALERT_DEAD_LETTER),
        (
            and_(
                _status_is(RetryStatus.PROCESSING),
                RetryItem.locked_at < after(at, -stale_lock_seconds),
            ),
            ALERT_STALE_LOCK,
        ),
        # retry_count above 80 % of max_retries, in integers.
        (
            and_(active, RetryItem.retry_count * 10 > RetryItem.max_retries * 8),
            ALERT_APPROACHING_LIMIT,
        ),
        (
            and_(
                _status_is(RetryStatus.PENDING),
                RetryItem.created_at < after(at, -old_pending_seconds),
            ),
            ALERT_OLD_PENDING,
        ),
        else_=None,
    ).label("reason")
    inner = select(
        RetryItem.id,
        RetryItem.event_id,
        RetryItem.event_type,
        RetryItem.plugin_name,
        RetryItem.channel_name,
        RetryItem.status,
        RetryItem.retry_count,
        RetryItem.max_retries,
        reason,
        RetryItem.error_message,
        RetryItem.created_at,
        RetryItem.locked_by,
        RetryItem.locked_at,
    ).subquery("flagged")
    return select(inner).where(inner.c.reason.is_not(None)).order_by(inner.c.id)


def stuck(at: datetime | None, older_than_seconds: float) -> AnySelect:
    """Processing items whose lock is older than the given age."""
    return (
        select(*SNAPSHOT_COLUMNS)
        .where(
            _status_is(RetryStatus.PROCESSING),
            RetryItem.locked_at < after(at, -older_than_seconds),
        )
        .order_by(RetryItem.locked_at, RetryItem.id)
    )


def items_per_hour(at: datetime | None, hours: int) -> AnySelect:
    """Items created per UTC hour over the last ``hours`` hours."""
    bucket = _hour_bucket(RetryItem.created_at).label("hour")
    return (
        select(bucket, func.count())
        .where(RetryItem.created_at > after(at, -hours * 3600.0))
        .group_by(bucket)
        .order_by(bucket)
    )


DEAD_LETTER_GROUPS = {
    "error_code": RetryItem.last_error_code,
    "event_type": RetryItem.event_type,
    "plugin": RetryItem.plugin_name,
    "plugin_name": RetryItem.plugin_name,
    "channel": RetryItem.channel_name,
    "channel_name": RetryItem.channel_name,
}


def dead_letter_groups(group_by: str) -> AnySelect:
    """Dead letters counted per group, with a sample error message and the age range."""
    key = DEAD_LETTER_GROUPS[group_by]
    return (
        select(
            key.label("key"),
            func.count().label("count"),
            func.max(RetryItem.error_message).label("sample_error"),
            func.min(RetryItem.created_at).label("oldest"),
            func.max(RetryItem.created_at).label("newest"),
        )
        .where(_status_is(RetryStatus.DEAD_LETTER))
        .group_by(key)
        .order_by(func.count().desc(), key)
    )


def success_rate_by_event_type() -> AnySelect:
    """Per event type: all items and the completed ones."""
    completed = func.sum(case((_status_is(RetryStatus.COMPLETED), 1), else_=0))
    return (
        select(RetryItem.event_type, func.count(), completed)
        .group_by(RetryItem.event_type)
        .order_by(RetryItem.event_type)
    )


def queue_gauges(at: datetime | None, stale_lock_seconds: float) -> AnySelect:
    """Now, the due time of the oldest due (claimable) pending item, and the stale-lock count.

    One round trip for the metrics exporter; all three figures are read on the same clock.
    """
    now = now_expr(at)
    oldest_due = (
        select(func.min(RetryItem.next_retry_at))
        .where(
            _status_is(RetryStatus.PENDING),
            RetryItem.next_retry_at <= now,
            RetryItem.expires_at > now,
        )
        .scalar_subquery()
    )
    stale_locks = (
        select(func.count())
        .select_from(RetryItem)
        .where(
            _status_is(RetryStatus.PROCESSING),
            or_(
                RetryItem.locked_at < after(at, -stale_lock_seconds),
                RetryItem.locked_at.is_(None),
            ),
        )
        .scalar_subquery()
    )
    return select(
        now.label("now"),
        oldest_due.label("oldest_due"),
        stale_locks.label("stale_locks"),
    )


def next_claimable_due(at: datetime | None) -> AnySelect:
    """The earliest next_retry_at among items :func:`claim` could take, and now.

    Unlike :func:`next_due`, skips expired and locked pending items (never claimed), so
    an idle worker does not keep waking for them.
    """
    now = now_expr(at)
    return select(func.min(RetryItem.next_retry_at).label("next_due"), now.label("now")).where(
        _status_is(RetryStatus.PENDING),
        RetryItem.locked_by.is_(None),
        RetryItem.expires_at > now,
    )


# ---------------------------------------------------------------------------------------
# Encryption at rest: key rotation rewrites the sealed columns in id order.


def sealed_queue_rows(after_id: int, limit: int) -> AnySelect:
    """The next ``limit`` queue rows after ``after_id``: id, event_data, error_message."""
    return (
        select(RetryItem.id, RetryItem.event_data, RetryItem.error_message)
        .where(RetryItem.id > after_id)
        .order_by(RetryItem.id)
        .limit(limit)
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


# ---------------------------------------------------------------------------------------
# Circuit breaker (see retryqueue.circuits): one row per key, transitions in an audit table.
# Every write is a compare-and-set on the row's version, so of two workers that read the
# same open circuit past its cool-down, exactly one turns it half-open and owns the probe.

CIRCUIT_COLUMNS = (
    RetryCircuit.circuit_key,
    RetryCircuit.state,
    RetryCircuit.consecutive_failures,
    RetryCircuit.window_started_at,
    RetryCircuit.window_attempts,
    RetryCircuit.window_failures,
    RetryCircuit.previous_attempts,
    RetryCircuit.previous_failures,
    RetryCircuit.opened_at,
    RetryCircuit.open_until,
    RetryCircuit.cooldown_seconds,
    RetryCircuit.probe_owner,
    RetryCircuit.probe_deadline,
    RetryCircuit.reason,
    RetryCircuit.version,
    RetryCircuit.updated_at,
)


def circuits_not_closed(at: datetime | None) -> AnySelect:
    """Circuits that are open or half-open, with now on the chosen clock (the gate's read)."""
    return select(*CIRCUIT_COLUMNS, now_expr(at).label("now")).where(
        RetryCircuit.state != literal_column("'closed'", String())
    )


def circuits_by_key(
    at: datetime | None, keys: Sequence[str], *, lock: bool, skip_locked: bool = False
) -> AnySelect:
    """These keys' circuits (key order), with now; ``lock``: FOR UPDATE, to change them.

    ``skip_locked``: rows another transaction holds are left out instead of waited for.
    """
    stmt = (
        select(*CIRCUIT_COLUMNS, now_expr(at).label("now"))
        .where(RetryCircuit.circuit_key.in_(list(keys)))
        .order_by(RetryCircuit.circuit_key)
    )
    return stmt.with_for_update(skip_locked=skip_locked) if lock else stmt


def database_now(at: datetime | None) -> AnySelect:
    """Now, on the chosen clock."""
    return select(now_expr(at).label("now"))


def all_circuits() -> AnySelect:
    """Every circuit row, by key."""
    return select(*CIRCUIT_COLUMNS).order_by(RetryCircuit.circuit_key)


def insert_circuits(dialect_name: str, at: datetime | None) -> Insert:
    """INSERT of closed circuit rows (executemany of ``circuit_key``), skipping existing keys."""
    table = cast("Table", RetryCircuit.__table__)
    stmt: Any
    if dialect_name == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing(index_elements=["circuit_key"])
    elif dialect_name == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=["circuit_key"])
    else:
        stmt = mysql.insert(table).on_duplicate_key_update(circuit_key=table.c.circuit_key)
    result: Insert = stmt.values(updated_at=now_expr(at))
    return result


def update_circuit(at: datetime | None, key: str, version: int, values: dict[str, Any]) -> Update:
    """Write a circuit's new state if its version is still ``version`` (then bump it).

    The caller checks the row count: 0 means another worker changed the circuit first.
    """
    return (
        update(RetryCircuit)
        .where(RetryCircuit.circuit_key == key, RetryCircuit.version == version)
        .values(**values, version=version + 1, updated_at=now_expr(at))
        .execution_options(**_SYNC_OFF)
    )


def insert_circuit_events(at: datetime | None) -> Insert:
    """INSERT of audit rows (executemany); occurred_at is now on the chosen clock."""
    table = cast("Table", RetryCircuitEvent.__table__)
    return insert(table).values(occurred_at=now_expr(at))


def circuit_events(key: str | None, limit: int) -> AnySelect:
    """The newest audit rows (of one key, or all), newest first."""
    stmt = select(
        RetryCircuitEvent.id,
        RetryCircuitEvent.circuit_key,
        RetryCircuitEvent.from_state,
        RetryCircuitEvent.to_state,
        RetryCircuitEvent.reason,
        RetryCircuitEvent.cooldown_seconds,
        RetryCircuitEvent.actor,
        RetryCircuitEvent.occurred_at,
    )
    if key is not None:
        stmt = stmt.where(RetryCircuitEvent.circuit_key == key)
    return stmt.order_by(RetryCircuitEvent.id.desc()).limit(limit)


def circuit_transition_counts() -> AnySelect:
    """Audit rows counted per (key, to_state), for the metrics exporter."""
    return (
        select(RetryCircuitEvent.circuit_key, RetryCircuitEvent.to_state, func.count())
        .group_by(RetryCircuitEvent.circuit_key, RetryCircuitEvent.to_state)
        .order_by(RetryCircuitEvent.circuit_key, RetryCircuitEvent.to_state)
    )
