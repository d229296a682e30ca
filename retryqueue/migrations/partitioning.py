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

The conversion lives in :mod:`retryqueue.migrations._partition_enable`, the months and the
catalog in :mod:`retryqueue.migrations._partition_months`; this module drops months past
the retention and re-exports the rest, so import everything from here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from retryqueue.migrations._partition_enable import REPLACED_INDEXES, EnableResult, enable
from retryqueue.migrations._partition_months import (
    DEFAULT_PARTITION,
    KEYS_TABLE,
    QUEUE,
    Partition,
    PartitioningError,
    create_partitions,
    is_partitioned,
    month_start,
    partition_name,
    partitions,
    quote_name,
    require_postgresql,
    retention_boundary,
    server_now,
)

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

_LIVE = "status IN ('pending', 'processing')"
_FINISHED_AT = "coalesce(completed_at, last_attempted_at, created_at)"
WOULD_DROP = "dry run: would be dropped"


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
    require_postgresql(connection)
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
            f"FROM {quote_name(connection, name)}"
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
    name = quote_name(connection, part.name)
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
