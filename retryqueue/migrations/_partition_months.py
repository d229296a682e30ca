"""The partitioned queue's months: their names and bounds, the catalog's view of the
partitions, and creating months ahead. Shared by the conversion
(:mod:`retryqueue.migrations._partition_enable`) and the maintenance in
:mod:`retryqueue.migrations.partitioning`, which re-exports the public names; private.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, text

from retryqueue.errors import MigrationError

__all__ = [
    "DEFAULT_PARTITION",
    "KEYS_TABLE",
    "QUEUE",
    "Partition",
    "PartitioningError",
    "create_partitions",
    "is_partitioned",
    "month_start",
    "partition_name",
    "partitions",
    "quote_name",
    "require_postgresql",
    "retention_boundary",
    "server_now",
]

QUEUE = "daz_retry_queue"
KEYS_TABLE = "daz_retry_event_keys"
DEFAULT_PARTITION = f"{QUEUE}_default"
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")


class PartitioningError(MigrationError):
    """Partitioning cannot be done here (not PostgreSQL, wrong state, refused drop)."""


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition of the queue: its range (None for the default) and its size."""

    name: str
    lower: datetime | None
    upper: datetime | None
    estimated_rows: int
    total_bytes: int

    @property
    def is_default(self) -> bool:
        """True for the default partition (rows outside every month's range)."""
        return self.lower is None


# -- months --------------------------------------------------------------------------------


def month_start(moment: datetime) -> datetime:
    """The first instant of ``moment``'s UTC month."""
    utc = moment.astimezone(UTC)
    return datetime(utc.year, utc.month, 1, tzinfo=UTC)


def _add_months(month: datetime, count: int) -> datetime:
    index = month.year * 12 + month.month - 1 + count
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partition_name(month: datetime) -> str:
    """The name of the partition holding ``month``: ``daz_retry_queue_p2026_01``."""
    start = month_start(month)
    return f"{QUEUE}_p{start.year:04d}_{start.month:02d}"


def retention_boundary(now: datetime, retention_seconds: float) -> datetime:
    """Months entirely before this instant are past the retention (a month start)."""
    return month_start(now - timedelta(seconds=retention_seconds))


# -- catalog -------------------------------------------------------------------------------


def require_postgresql(connection: Connection) -> None:
    name = connection.dialect.name
    if name != "postgresql":
        raise PartitioningError(f"partitioning is PostgreSQL-only (this database is {name})")


def is_partitioned(connection: Connection) -> bool:
    """Whether ``daz_retry_queue`` is a partitioned table (False off PostgreSQL)."""
    if connection.dialect.name != "postgresql":
        return False
    found = connection.execute(
        text(
            "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(:t))"
        ),
        {"t": QUEUE},
    ).scalar()
    return bool(found)


def partitions(connection: Connection) -> list[Partition]:
    """The queue's partitions, oldest month first, the default partition last."""
    require_postgresql(connection)
    if not is_partitioned(connection):
        raise PartitioningError(f"{QUEUE} is not partitioned (see `retryqueue db partition`)")
    rows = connection.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), c.reltuples, "
            "pg_total_relation_size(c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:t)"
        ),
        {"t": QUEUE},
    ).all()
    found = []
    for name, bound, tuples, size in rows:
        match = _BOUND.search(bound or "")
        lower, upper = (None, None)
        if match:
            lower, upper = (_timestamp(value) for value in match.groups())
        found.append(Partition(name, lower, upper, max(int(tuples), 0), int(size)))
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(found, key=lambda part: (part.lower or far, part.name))


def _timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


def server_now(connection: Connection, now: datetime | None = None) -> datetime:
    """``now`` in UTC, or the database server's current time when ``now`` is None."""
    if now is not None:
        return now.astimezone(UTC)
    moment: datetime = connection.execute(text("SELECT now()")).scalar_one()
    return moment.astimezone(UTC)


def quote_name(connection: Connection, name: str) -> str:
    return str(connection.dialect.identifier_preparer.quote(name))


def _literal(moment: datetime) -> str:
    return f"'{moment.astimezone(UTC).isoformat()}'"


# -- creating months -----------------------------------------------------------------------


def create_partitions(
    connection: Connection,
    *,
    months_ahead: int = 3,
    now: datetime | None = None,
    start: datetime | None = None,
) -> list[str]:
    """Create the monthly partitions from ``start`` (default: this month) to
    ``months_ahead`` months after the current one; return the names created.

    Idempotent: existing months are left alone. Rows that fell into the default partition
    for a month being created are moved into it. Run it monthly (cron), well ahead.

    When a month is missing, the queue is locked (``ACCESS EXCLUSIVE``: enqueues, claims
    and reads wait) until the caller's transaction ends, so no write can land in the
    default partition while its rows move; commit promptly.
    """
    require_postgresql(connection)
    if months_ahead < 0:
        raise PartitioningError("months_ahead must be 0 or more")
    current = month_start(server_now(connection, now))
    first = month_start(start) if start is not None else current
    wanted = []
    month = min(first, current)
    while month <= _add_months(current, months_ahead):
        wanted.append(month)
        month = _add_months(month, 1)
    if not _missing(connection, wanted):
        return []  # the daily cron's usual case: no lock taken
    # Hold everyone off the queue until this transaction ends. A row that an enqueue or a
    # claim wrote into the default partition while its month was being moved out would be
    # lost (copied before, deleted after) or, once routed, violate the new bound. Writers
    # lock the parent before routing a row, so they wait here and then go into the new
    # month. The strongest mode, taken before anything else: creating and attaching the
    # month need ACCESS EXCLUSIVE anyway, and a weaker lock first would deadlock with a
    # transaction that read (or SELECT ... FOR UPDATE) the queue before writing to it.
    connection.execute(text(f"LOCK TABLE {QUEUE} IN ACCESS EXCLUSIVE MODE"))
    created = []
    for month in _missing(connection, wanted):  # again: a concurrent run may have made some
        _create_month(connection, month)
        created.append(partition_name(month))
    return created


def _missing(connection: Connection, months: list[datetime]) -> list[datetime]:
    existing = {part.lower for part in partitions(connection) if part.lower is not None}
    return [month for month in months if month not in existing]


def _create_month(connection: Connection, month: datetime) -> None:
    name = quote_name(connection, partition_name(month))
    bounds = f"FROM ({_literal(month)}) TO ({_literal(_add_months(month, 1))})"
    in_range = f"created_at >= {_literal(month)} AND created_at < {_literal(_add_months(month, 1))}"
    default = quote_name(connection, DEFAULT_PARTITION)
    stranded = connection.execute(text(f"SELECT EXISTS (SELECT 1 FROM {default} WHERE {in_range})"))
    if not stranded.scalar():
        connection.execute(text(f"CREATE TABLE {name} PARTITION OF {QUEUE} FOR VALUES {bounds}"))
        return
    # Rows of this month sit in the default partition: PostgreSQL refuses to create the
    # month over them. Build the month as a plain table, move them, then attach it.
    connection.execute(
        text(f"CREATE TABLE {name} (LIKE {QUEUE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    )
    connection.execute(text(f"INSERT INTO {name} SELECT * FROM {default} WHERE {in_range}"))
    connection.execute(text(f"DELETE FROM {default} WHERE {in_range}"))
    connection.execute(text(f"ALTER TABLE {QUEUE} ATTACH PARTITION {name} FOR VALUES {bounds}"))
