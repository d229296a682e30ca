"""Opt-in monthly partitioning of ``daz_retry_queue`` on PostgreSQL (not a revision).

:func:`enable` converts the table, in one transaction, into a table range-partitioned by
``created_at`` with one partition per UTC month (plus a default partition, so an insert
never fails for want of a month). What changes, because PostgreSQL requires the partition
key in every unique constraint:

* the primary key becomes ``(id, created_at)``; ids still come from the same sequence, so
  they stay unique and are never reused;
* the unique index on ``event_id`` cannot exist on the partitioned table. Idempotent
  enqueue is kept by a small table ``daz_retry_event_keys (event_id PRIMARY KEY, ...)``:
  a BEFORE INSERT trigger claims the key and skips the row when the event_id is taken,
  which is what ``INSERT ... ON CONFLICT DO NOTHING`` did with the unique index (under
  every isolation level: the key's unique index arbitrates). Deleting rows releases their
  keys (a statement-level trigger); a partition drop leaves them behind and they are
  deleted afterwards, outside the queue's lock (the trigger treats a key whose row is gone
  as free);
* every other index becomes a partitioned index, plus a plain index on ``event_id`` for
  the enqueue's look-up of existing rows.

The history table has no foreign key to the queue (it outlives the items), so nothing
changes there. Every function here raises :class:`PartitioningError` on SQLite and
MySQL/MariaDB. See docs/partitioning.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, Table, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.schema import CreateIndex

from retryqueue.errors import MigrationError, database_error
from retryqueue.migrations import _preserved as preserved
from retryqueue.models import RetryItem

__all__ = [
    "DEFAULT_PARTITION",
    "KEYS_TABLE",
    "REPLACED_INDEXES",
    "EnableResult",
    "Partition",
    "PartitionDrop",
    "PartitioningError",
    "create_partitions",
    "drop_partition",
    "drop_partitions",
    "enable",
    "forget_keys",
    "is_partitioned",
    "iter_drop_partitions",
    "month_start",
    "partition_name",
    "partitions",
    "partitions_past",
    "retention_boundary",
    "server_now",
]

QUEUE = "daz_retry_queue"
KEYS_TABLE = "daz_retry_event_keys"
DEFAULT_PARTITION = f"{QUEUE}_default"
_RENAMED = f"{QUEUE}_unpartitioned"
_UNIQUE_EVENT_ID = "uq_retry_queue_event_id"
_EVENT_ID_INDEX = "idx_retry_queue_event_id"
_CLAIM_KEY = "daz_retry_claim_event_key"
_RELEASE_KEYS = "daz_retry_release_event_keys"
_FORGET_KEYS = "daz_retry_forget_event_keys"
REPLACED_INDEXES = frozenset({_UNIQUE_EVENT_ID, _EVENT_ID_INDEX})
"""The model's unique event_id index and the plain one that stands in for it when partitioned."""
_LIVE = "status IN ('pending', 'processing')"
_FINISHED_AT = "coalesce(completed_at, last_attempted_at, created_at)"
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")
WOULD_DROP = "dry run: would be dropped"


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


@dataclass(frozen=True, slots=True)
class PartitionDrop:
    """What happened (or would happen) to one month past the retention.

    ``rows``: rows in it; ``live``: pending or processing; ``recent``: finished after the
    cutoff. Only a month with neither is dropped; ``reason`` says why one was kept.
    """

    name: str
    lower: datetime
    upper: datetime
    rows: int
    live: int
    recent: int
    dropped: bool
    reason: str | None = None

    @property
    def droppable(self) -> bool:
        """Dropped, or (dry run) would be dropped."""
        return self.dropped or self.reason == WOULD_DROP


@dataclass(frozen=True, slots=True)
class EnableResult:
    """The outcome of :func:`enable`: rows moved and partitions created."""

    rows_copied: int
    partitions: tuple[str, ...]


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


def _require_postgresql(connection: Connection) -> None:
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
    _require_postgresql(connection)
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


def _quote(connection: Connection, name: str) -> str:
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
    _require_postgresql(connection)
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
    name = _quote(connection, partition_name(month))
    bounds = f"FROM ({_literal(month)}) TO ({_literal(_add_months(month, 1))})"
    in_range = f"created_at >= {_literal(month)} AND created_at < {_literal(_add_months(month, 1))}"
    default = _quote(connection, DEFAULT_PARTITION)
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


# -- enabling ------------------------------------------------------------------------------


def enable(engine: Engine, *, months_ahead: int = 3, now: datetime | None = None) -> EnableResult:
    """Convert ``daz_retry_queue`` into a monthly partitioned table, keeping every row.

    One transaction under an exclusive lock: enqueues and workers wait until it commits
    (count on about 100k rows a second). On any error nothing has changed. The schema must
    be at the head revision first (``retryqueue db upgrade``).
    """
    if engine.dialect.name != "postgresql":
        raise PartitioningError(
            f"partitioning is PostgreSQL-only (this database is {engine.dialect.name})"
        )
    try:
        with engine.begin() as connection:
            return _enable(connection, months_ahead, now)
    except SQLAlchemyError as exc:
        raise database_error("partition enable", exc) from exc


def _enable(connection: Connection, months_ahead: int, now: datetime | None) -> EnableResult:
    if connection.execute(text("SELECT to_regclass(:t)"), {"t": QUEUE}).scalar() is None:
        raise PartitioningError(f"{QUEUE} does not exist: run `retryqueue db upgrade` first")
    if is_partitioned(connection):
        raise PartitioningError(f"{QUEUE} is already partitioned")
    if connection.execute(text("SELECT to_regclass(:i)"), {"i": _UNIQUE_EVENT_ID}).scalar() is None:
        raise PartitioningError(f"{QUEUE} is not at the head revision: run `retryqueue db upgrade`")
    connection.execute(text(f"LOCK TABLE {QUEUE} IN ACCESS EXCLUSIVE MODE"))
    schema = connection.execute(
        text("SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = to_regclass(:t)"),
        {"t": QUEUE},
    ).scalar_one()
    grants = _grants(connection)
    primary_key, comment = preserved.primary_key_and_comment(connection, QUEUE)
    views = preserved.dependent_views(connection, QUEUE)
    for view in views:  # views bind to the table itself: rebuilt on the new one below
        connection.execute(text(f"DROP VIEW {view.name}"))
    sequence = connection.execute(
        text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": QUEUE}
    ).scalar()
    oldest = connection.execute(text(f"SELECT min(created_at) FROM {QUEUE}")).scalar()
    connection.execute(text(f"ALTER TABLE {QUEUE} RENAME TO {_RENAMED}"))
    if sequence:  # keep the sequence (and its grants) when the old table is dropped
        connection.execute(text(f"ALTER SEQUENCE {sequence} OWNED BY NONE"))
    connection.execute(
        text(
            f"CREATE TABLE {QUEUE} (LIKE {_RENAMED} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
            "INCLUDING STORAGE INCLUDING COMMENTS) PARTITION BY RANGE (created_at)"
        )
    )
    connection.execute(text(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF {QUEUE} DEFAULT"))
    created = create_partitions(connection, months_ahead=months_ahead, now=now, start=oldest)
    copied = connection.execute(text(f"INSERT INTO {QUEUE} SELECT * FROM {_RENAMED}")).rowcount
    connection.execute(
        text(
            f"CREATE TABLE {KEYS_TABLE} (event_id uuid PRIMARY KEY, "
            "retry_queue_id bigint NOT NULL, created_at timestamptz NOT NULL)"
        )
    )
    connection.execute(
        text(f"CREATE INDEX ix_{KEYS_TABLE}_created_at ON {KEYS_TABLE} (created_at)")
    )
    connection.execute(
        text(f"INSERT INTO {KEYS_TABLE} SELECT event_id, id, created_at FROM {_RENAMED}")
    )
    connection.execute(text(f"DROP TABLE {_RENAMED}"))
    if sequence:
        connection.execute(text(f"ALTER SEQUENCE {sequence} OWNED BY {QUEUE}.id"))
    _indexes(connection, primary_key)
    if comment is not None:
        comment = preserved.sql_string(connection, comment)
        connection.execute(text(f"COMMENT ON TABLE {QUEUE} IS {comment}"))
    _triggers(connection, schema)
    for statement in grants:
        connection.execute(text(statement))
    for view in views:
        view.recreate(connection)
    return EnableResult(int(copied), (*created, DEFAULT_PARTITION))


def _grants(connection: Connection) -> list[str]:
    """GRANTs that give the new table the privileges the old one had (owner aside)."""
    rows = connection.execute(
        text(
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END, "
            "a.privilege_type FROM pg_class c, aclexplode(c.relacl) a "
            "WHERE c.oid = to_regclass(:t) AND a.grantee <> c.relowner"
        ),
        {"t": QUEUE},
    ).all()
    return [f"GRANT {privilege} ON {QUEUE} TO {grantee}" for grantee, privilege in rows]


def _indexes(connection: Connection, primary_key: str) -> None:
    """The models' indexes as partitioned indexes; event_id loses its uniqueness."""
    key = _quote(connection, primary_key)
    connection.execute(
        text(f"ALTER TABLE {QUEUE} ADD CONSTRAINT {key} PRIMARY KEY (id, created_at)")
    )
    table: Table = RetryItem.__table__  # type: ignore[assignment]
    present = set(
        connection.execute(
            text(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(:t) "
                "AND attnum > 0 AND NOT attisdropped"
            ),
            {"t": QUEUE},
        ).scalars()
    )
    for index in sorted(table.indexes, key=lambda each: str(each.name)):
        # A table partitioned at an earlier revision lacks later columns: the revision
        # that adds such a column creates its index (on every partition) when it runs.
        if index.name != _UNIQUE_EVENT_ID and {c.name for c in index.columns} <= present:
            connection.execute(CreateIndex(index))
    connection.execute(text(f"CREATE INDEX {_EVENT_ID_INDEX} ON {QUEUE} (event_id)"))


def _triggers(connection: Connection, schema: str) -> None:
    queue = f"{schema}.{QUEUE}"
    keys = f"{schema}.{KEYS_TABLE}"
    # SECURITY DEFINER: the runtime role needs no privileges on the keys table.
    header = "RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS"
    connection.execute(
        text(
            f"""
            CREATE FUNCTION {schema}.{_CLAIM_KEY}() {header} $$
            DECLARE
                holder bigint;
                held_since timestamptz;
            BEGIN
                INSERT INTO {keys} (event_id, retry_queue_id, created_at)
                VALUES (NEW.event_id, NEW.id, NEW.created_at)
                ON CONFLICT (event_id) DO NOTHING;
                IF FOUND THEN
                    RETURN NEW;
                END IF;
                SELECT retry_queue_id, created_at INTO holder, held_since
                FROM {keys} WHERE event_id = NEW.event_id;
                IF EXISTS (SELECT 1 FROM {queue} WHERE id = holder AND created_at = held_since)
                THEN
                    RETURN NULL;  -- a duplicate: skipped, as ON CONFLICT DO NOTHING would
                END IF;
                -- The key outlived its row (a dropped partition): take it over, unless a
                -- concurrent insert took it first.
                UPDATE {keys} SET retry_queue_id = NEW.id, created_at = NEW.created_at
                WHERE event_id = NEW.event_id AND retry_queue_id = holder;
                IF FOUND THEN
                    RETURN NEW;
                END IF;
                RETURN NULL;
            END $$
            """
        )
    )
    connection.execute(
        text(
            f"""
            CREATE FUNCTION {schema}.{_RELEASE_KEYS}() {header} $$
            BEGIN
                DELETE FROM {keys} k USING gone g
                WHERE k.event_id = g.event_id AND k.retry_queue_id = g.id;
                RETURN NULL;
            END $$
            """
        )
    )
    connection.execute(
        text(
            f"CREATE FUNCTION {schema}.{_FORGET_KEYS}() {header} "
            f"$$ BEGIN DELETE FROM {keys}; RETURN NULL; END $$"
        )
    )
    connection.execute(
        text(
            f"CREATE TRIGGER {QUEUE}_claim_event_key BEFORE INSERT ON {QUEUE} "
            f"FOR EACH ROW EXECUTE FUNCTION {schema}.{_CLAIM_KEY}()"
        )
    )
    connection.execute(
        text(
            f"CREATE TRIGGER {QUEUE}_release_event_keys AFTER DELETE ON {QUEUE} "
            f"REFERENCING OLD TABLE AS gone FOR EACH STATEMENT "
            f"EXECUTE FUNCTION {schema}.{_RELEASE_KEYS}()"
        )
    )
    connection.execute(
        text(
            f"CREATE TRIGGER {QUEUE}_forget_event_keys AFTER TRUNCATE ON {QUEUE} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {schema}.{_FORGET_KEYS}()"
        )
    )


# -- dropping months -----------------------------------------------------------------------


def iter_drop_partitions(
    connection: Connection,
    older_than_seconds: float,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    lock_timeout_seconds: float = 5.0,
) -> Iterator[PartitionDrop]:
    """Drop the months that ended more than ``older_than_seconds`` ago, one at a time.

    A month is dropped only if none of its rows is pending or processing and every one
    finished before the cutoff; otherwise it is kept (and reported, with the reason) and
    its finished rows are left to DELETE-based cleanup. Commit after each yielded result:
    the drop holds an exclusive lock on the queue (for a scan of the month and the drop;
    waiting for it at most ``lock_timeout_seconds``, else the month is kept as busy).
    Each month is finished before it is yielded: dropped, and its event keys deleted
    (:func:`forget_keys`), in the caller's transaction.
    """
    _require_postgresql(connection)
    cutoff = server_now(connection, now) - timedelta(seconds=older_than_seconds)
    for part in partitions_past(connection, cutoff):
        result = drop_partition(
            connection, part, cutoff, dry_run=dry_run, lock_timeout_seconds=lock_timeout_seconds
        )
        if result.dropped:
            # Before the yield: a caller that stops iterating (or commits and walks away)
            # must not leave the month's keys behind forever. Same transaction as the drop,
            # so the two commit or roll back together.
            forget_keys(connection, part)
        yield result


def partitions_past(connection: Connection, cutoff: datetime) -> list[Partition]:
    """The monthly partitions that ended before ``cutoff``'s month began."""
    boundary = month_start(cutoff)
    return [
        part for part in partitions(connection) if part.upper is not None and part.upper <= boundary
    ]


def drop_partitions(
    connection: Connection,
    older_than_seconds: float,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
) -> list[PartitionDrop]:
    """:func:`iter_drop_partitions` in the caller's transaction, as a list."""
    return list(iter_drop_partitions(connection, older_than_seconds, now=now, dry_run=dry_run))


def _census(connection: Connection, name: str, cutoff: datetime) -> tuple[int, int, int]:
    row = connection.execute(
        text(
            f"SELECT count(*), count(*) FILTER (WHERE {_LIVE}), "
            f"count(*) FILTER (WHERE NOT ({_LIVE}) AND {_FINISHED_AT} >= :cutoff) "
            f"FROM {_quote(connection, name)}"
        ),
        {"cutoff": cutoff},
    ).one()
    return int(row[0]), int(row[1]), int(row[2])


def drop_partition(
    connection: Connection,
    part: Partition,
    cutoff: datetime,
    *,
    dry_run: bool = False,
    lock_timeout_seconds: float = 5.0,
) -> PartitionDrop:
    """Drop one month if it holds no live item and nothing finished after ``cutoff``.

    The check and the drop run under an exclusive lock on the queue, in a savepoint: a
    refused or failed drop (lock timeout, missing privilege) leaves the caller's
    transaction usable and the month in place. Then call :func:`forget_keys` in the same
    transaction, so that the drop and its keys' removal commit together.
    """
    assert part.lower is not None and part.upper is not None
    timeout = lock_timeout_seconds
    name = _quote(connection, part.name)
    live = connection.execute(text(f"SELECT count(*) FROM {name} WHERE {_LIVE}")).scalar_one()
    if live or dry_run:  # the cheap, unlocked look (served by the partial status index)
        rows, live, recent = _census(connection, part.name, cutoff)
        return _verdict(part, rows, live, recent, dropped=False, dry_run=dry_run)
    previous = connection.execute(text("SELECT current_setting('lock_timeout')")).scalar_one()
    savepoint = connection.begin_nested()
    try:
        connection.execute(
            text("SELECT set_config('lock_timeout', :ms, true)"), {"ms": f"{int(timeout * 1000)}"}
        )
        connection.execute(text(f"LOCK TABLE {QUEUE} IN ACCESS EXCLUSIVE MODE"))
        rows, live, recent = _census(connection, part.name, cutoff)
        if live or recent:
            savepoint.rollback()  # releases the lock at once
            return _verdict(part, rows, live, recent, dropped=False, dry_run=False)
        connection.execute(text(f"DROP TABLE {name}"))
        connection.execute(
            text("SELECT set_config('lock_timeout', :previous, true)"), {"previous": previous}
        )
        savepoint.commit()
    except DBAPIError as exc:
        savepoint.rollback()
        detail = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        return PartitionDrop(part.name, part.lower, part.upper, 0, 0, 0, False, detail)
    return _verdict(part, rows, live, recent, dropped=True, dry_run=False)


def _verdict(
    part: Partition, rows: int, live: int, recent: int, *, dropped: bool, dry_run: bool
) -> PartitionDrop:
    assert part.lower is not None and part.upper is not None
    reason = None
    if live:
        reason = f"{live} pending/processing item(s): kept, finished rows left to DELETE"
    elif recent:
        reason = f"{recent} item(s) finished after the cutoff: kept"
    elif dry_run:
        reason = WOULD_DROP
    return PartitionDrop(part.name, part.lower, part.upper, rows, live, recent, dropped, reason)


def forget_keys(connection: Connection, part: Partition) -> int:
    """Delete the event keys a dropped month left behind (those whose row is gone).

    One statement: batches in one transaction would each re-walk the index entries of
    the keys deleted before them (not yet vacuumable), which grows quadratically. It
    locks only those keys; the queue itself is not touched. Returns the keys deleted.
    """
    statement = text(
        f"DELETE FROM {KEYS_TABLE} k WHERE k.created_at >= :lower AND k.created_at < :upper "
        f"AND NOT EXISTS (SELECT 1 FROM {QUEUE} q WHERE q.id = k.retry_queue_id "
        "AND q.created_at = k.created_at)"
    )
    result = connection.execute(statement, {"lower": part.lower, "upper": part.upper})
    return int(result.rowcount)
