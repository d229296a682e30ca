"""Enqueue: the bulk INSERT (idempotent on event_id), NOTIFY/LISTEN, next due time."""

from __future__ import annotations

import functools
import json
import operator
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Float,
    Insert,
    Integer,
    Select,
    Text,
    bindparam,
    cast,
    column,
    func,
    insert,
    literal,
    literal_column,
    select,
    table,
    text,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Dialect

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
from retryqueue.types import SealedJSON, UTCDateTime, utc_now

# Bulk enqueue on the database clock computes due and expiry times on the server per row.
_ROW_RUN_AT = "p_run_at"
_ROW_DELAY = "p_delay_s"
_ROW_EXPIRES_AT = "p_expires_at"
_ROW_TTL = "p_ttl_s"
_ROW_DEADLINE = "p_deadline"
_ROW_RETRY_FOR = "p_retry_for_s"


def insert_items(dialect_name: str, at: datetime | None, *, targeted: bool = False) -> Insert:
    """INSERT of queue rows, skipping rows whose event_id exists; RETURNING id, event_id.

    PostgreSQL: ``targeted`` names event_id as the conflict target (see
    :func:`insert_items_json`).

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
        # By default no conflict target: a partitioned table (docs/partitioning.md) has no
        # unique index to name; there a trigger skips a duplicate event_id as DO NOTHING
        # does. A row skipped for another reason is caught by the caller's look-up.
        stmt = _on_conflict(postgresql.insert(table), targeted)
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
            retry_deadline=func.coalesce(
                bindparam(_ROW_DEADLINE, type_=UTCDateTime()),
                _now_plus_seconds(bindparam(_ROW_RETRY_FOR, type_=Float())),
            ),
        )
    if not has_returning(dialect_name):
        plain: Insert = stmt
        return plain
    result: Insert = stmt.returning(table.c.id, table.c.event_id)
    return result


# PostgreSQL: the rows travel as one JSON document, unpacked by jsonb_to_recordset. A
# multi-row VALUES of 1,000 rows has ~17,000 placeholders: psycopg re-parses that text on
# every execution (it caches only short queries) and the server plans it each time. This
# statement's text is short and constant; 5 to 9 times faster (docs/benchmarks.md).
_RECORD_COLUMNS = (
    "event_id",
    "event_type",
    "channel_name",
    "plugin_name",
    "event_data",
    "event_metadata",
    "max_retries",
    "retry_delay_seconds",
    "backoff_multiplier",
    "priority",
    "correlation_id",
    "tags",
)
_PYTHON_CLOCK_COLUMNS = ("created_at", "next_retry_at", "expires_at", "retry_deadline")
_PAYLOAD_ROWS = 1000
_PAYLOAD_BYTES = 8 * 1024 * 1024


def _on_conflict(stmt: postgresql.Insert, targeted: bool | None) -> postgresql.Insert:
    if targeted is None:  # the partitioned table: its trigger skips duplicates
        return stmt
    if targeted:  # the plain table: any other conflict (an id) raises
        return stmt.on_conflict_do_nothing(index_elements=["event_id"])
    # Untargeted, so that one statement serves the plain and the partitioned table: a row
    # it skipped that no look-up then finds goes through a targeted retry (RetryQueue).
    return stmt.on_conflict_do_nothing()


@functools.cache
def insert_items_json(server_clock: bool, targeted: bool | None = False) -> Insert:
    """PostgreSQL's :func:`insert_items`: the rows in one ``rows`` JSON parameter.

    Same effect and RETURNING (id, event_id); the parameter comes from :func:`json_payloads`.
    ``targeted``: False, ``ON CONFLICT DO NOTHING`` (any conflict: the everyday statement,
    valid on the plain and the partitioned table); True, ``ON CONFLICT (event_id) DO
    NOTHING`` (the plain table; a colliding id raises); None, no ON CONFLICT (the
    partitioned table, whose trigger skips a taken event_id; a colliding id raises).
    """
    payload = cast(bindparam("rows", type_=Text()), postgresql.JSONB)
    record = (
        func.jsonb_to_recordset(payload)
        .table_valued(*_record_fields(server_clock))
        .render_derived(name="item", with_types=True)
    )
    return _insert_from(record, server_clock, targeted=targeted)


def json_payloads(rows: Sequence[dict[str, Any]], dialect: Dialect) -> Iterator[str]:
    """The ``rows`` parameters of :func:`insert_items_json`: JSON arrays of at most 1,000
    rows or about 8 MiB each, in input order. event_data is sealed here when encryption is
    on (the column type would have done it for a bound value)."""
    sealed = SealedJSON()
    batch: list[str] = []
    size = 0
    for row in rows:
        document = {
            name: _json_value(sealed.process_bind_param(value, dialect))
            if name == "event_data"
            else _json_value(value)
            for name, value in row.items()
            if name not in ("status", "retry_count")
        }
        text_row = json.dumps(document, separators=(",", ":"))
        if batch and (len(batch) == _PAYLOAD_ROWS or size + len(text_row) > _PAYLOAD_BYTES):
            yield "[" + ",".join(batch) + "]"
            batch, size = [], 0
        batch.append(text_row)
        size += len(text_row)
    if batch:
        yield "[" + ",".join(batch) + "]"


# PostgreSQL with psycopg 3: the rows go by COPY into a temporary staging table (one per
# connection, emptied at commit), then one INSERT ... SELECT moves them into the queue.
_STAGING = {True: "rq_enqueue_staging_server", False: "rq_enqueue_staging_python"}


def _record_fields(server_clock: bool) -> list[Any]:
    """The per-row columns of a bulk enqueue on PostgreSQL (JSON record or staging table)."""
    table = QUEUE_TABLE
    fields = [column(name, table.c[name].type) for name in _RECORD_COLUMNS]
    if server_clock:
        fields += [
            column(_ROW_RUN_AT, UTCDateTime()),
            column(_ROW_DELAY, Float()),
            column(_ROW_EXPIRES_AT, UTCDateTime()),
            column(_ROW_TTL, Float()),
            column(_ROW_DEADLINE, UTCDateTime()),
            column(_ROW_RETRY_FOR, Float()),
        ]
    else:
        fields += [column(name, table.c[name].type) for name in _PYTHON_CLOCK_COLUMNS]
    return fields


def _insert_from(
    record: Any, server_clock: bool, order_by: Any = None, *, targeted: bool | None = False
) -> Insert:
    """INSERT into the queue of the rows of ``record`` (columns: :func:`_record_fields`);
    ``targeted`` as for :func:`insert_items_json`."""
    table = QUEUE_TABLE
    values: dict[str, Any] = {name: record.c[name] for name in _RECORD_COLUMNS}
    values["retry_count"] = literal(0)
    values["status"] = literal_column(f"'{RetryStatus.PENDING.value}'")
    if server_clock:
        values["created_at"] = utc_now()
        values["next_retry_at"] = func.coalesce(
            record.c[_ROW_RUN_AT], _now_plus_seconds(record.c[_ROW_DELAY])
        )
        values["expires_at"] = func.coalesce(
            record.c[_ROW_EXPIRES_AT], _now_plus_seconds(record.c[_ROW_TTL])
        )
        values["retry_deadline"] = func.coalesce(
            record.c[_ROW_DEADLINE], _now_plus_seconds(record.c[_ROW_RETRY_FOR])
        )
    else:
        values.update({name: record.c[name] for name in _PYTHON_CLOCK_COLUMNS})
    rows = select(*values.values())
    if order_by is not None:
        rows = rows.order_by(order_by)
    stmt = _on_conflict(postgresql.insert(table).from_select(list(values), rows), targeted)
    result: Insert = stmt.returning(table.c.id, table.c.event_id)
    return result


@functools.cache
def staging_statements(server_clock: bool, dialect: Dialect) -> tuple[str, str]:
    """PostgreSQL/psycopg 3: (CREATE the staging table if missing, its COPY ... FROM STDIN)
    for :func:`insert_items_staged`. A temporary table, so it is private to the
    connection; the INSERT takes the rows out (and ``ON COMMIT DELETE ROWS`` would)."""
    name = _STAGING[server_clock]
    fields = _record_fields(server_clock)
    columns = ", ".join(f"{field.name} {field.type.compile(dialect=dialect)}" for field in fields)
    create = (
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {name} (ord integer, {columns}) "
        "ON COMMIT DELETE ROWS"
    )
    names = ", ".join(field.name for field in fields)
    return create, f"COPY {name} (ord, {names}) FROM STDIN"


@functools.cache
def insert_items_staged(server_clock: bool) -> Insert:
    """PostgreSQL: the queue INSERT of the rows it DELETEs from the COPY staging table (one
    statement: the table is empty again for the next call in the same transaction), in
    input order, skipping existing event_ids (``ON CONFLICT DO NOTHING``, or the
    partitioned table's trigger); RETURNING id, event_id."""
    staging = table(_STAGING[server_clock], column("ord", Integer()), *_record_fields(server_clock))
    staged = staging.delete().returning(*staging.c).cte("staged")
    return _insert_from(staged, server_clock, order_by=staged.c.ord).add_cte(staged)


def staged_rows(
    rows: Sequence[dict[str, Any]], dialect: Dialect, server_clock: bool
) -> Iterator[tuple[Any, ...]]:
    """The COPY rows of :func:`staging_statements`: ``ord`` then the record columns, with
    event_data sealed (encryption at rest) and the JSON columns as JSON text."""
    seal = functools.partial(SealedJSON().process_bind_param, dialect=dialect)
    names = [field.name for field in _record_fields(server_clock)]
    values_of = operator.itemgetter(*names)
    data_at = 1 + names.index("event_data")  # ord comes first
    metadata_at = 1 + names.index("event_metadata")
    dumps = json.dumps
    for number, row in enumerate(rows):
        values = [number, *values_of(row)]
        values[data_at] = dumps(seal(values[data_at]))
        if values[metadata_at] is not None:
            values[metadata_at] = dumps(values[metadata_at])
        yield tuple(values)


def _json_value(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return value


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


def server_deadline_params(deadline: datetime | None, retry_for: float | None) -> dict[str, Any]:
    """The per-row retry-deadline parameters of :func:`insert_items` on the database clock
    (both None: no deadline)."""
    return {_ROW_DEADLINE: deadline, _ROW_RETRY_FOR: retry_for}


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
