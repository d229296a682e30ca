"""Enqueueing: :meth:`~retryqueue.queue.RetryQueue.enqueue` and ``enqueue_many`` by COPY
(psycopg 3), a JSON parameter (other PostgreSQL drivers) or a multi-row VALUES.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from retryqueue import hooks
from retryqueue import statements as sql
from retryqueue._new_rows import NewItem, item_row
from retryqueue.errors import EnqueueRaceError, InvalidArgument, database_error
from retryqueue.queue._base import _QueueBase
from retryqueue.queue._support import _core, _database_errors
from retryqueue.results import EnqueuedItem

# How often enqueue re-inserts an event_id whose holder vanished before its id was read.
_VANISHED_RETRIES = 3

# COPY costs three round trips (create the staging table if missing, COPY, INSERT):
# worth it for a bulk, not for a few rows (a single enqueue keeps one).
_COPY_FROM_ROWS = 50


class _Enqueue(_QueueBase):
    """Adding items."""

    def enqueue(
        self, session: Session, /, event_type: str, event_data: Any, **fields: Any
    ) -> EnqueuedItem:
        """Add one item; every column is settable through keyword arguments.

        Keywords: ``channel_name``, ``plugin_name``, ``event_metadata``, ``max_retries``,
        ``retry_delay_seconds``, ``backoff_multiplier``, ``priority`` (1..10, 10 first),
        ``correlation_id``, ``tags``, ``event_id``, ``run_at`` or ``delay`` (when it is first
        due; default now), ``expires_at`` or ``ttl`` (default now + 7 days), ``deadline``
        (aware datetime) or ``retry_for`` (seconds from now): no retry is scheduled after
        it (docs/retries.md).

        Idempotent on ``event_id``: enqueueing an existing event_id changes nothing and
        returns the existing row with ``created=False``. Invalid input raises
        :class:`~retryqueue.errors.InvalidArgument` before anything is written.
        """
        unknown = set(fields) - set(NewItem.__dataclass_fields__)
        if unknown:
            raise InvalidArgument(", ".join(sorted(unknown)), "unknown enqueue argument")
        return self.enqueue_many(session, [NewItem(event_type, event_data, **fields)])[0]

    @_database_errors
    def enqueue_many(self, session: Session, items: Iterable[NewItem]) -> list[EnqueuedItem]:
        """Add many items in bulk INSERTs; results are in input order.

        Every item is validated before any row is written. On PostgreSQL with psycopg 3
        (sync) 50 rows or more go by COPY into a temporary staging table on the session's
        connection, inside the caller's transaction, then one ``INSERT … SELECT … ON
        CONFLICT DO NOTHING``; with other PostgreSQL drivers they travel as one JSON
        parameter per 1,000 rows (or ~8 MiB); elsewhere as a multi-row VALUES.
        """
        at = self.now(session)
        rows = [
            item_row(
                index,
                item,
                at,
                max_payload_bytes=self.max_payload_bytes,
                default_ttl=self.default_ttl,
            )
            for index, item in enumerate(items)
        ]
        if not rows:
            return []
        hook = hooks.active  # instrumentation seam (retryqueue.hooks)
        if hook is not None:
            with hook.enqueue(rows):
                return self._insert_rows(session, at, rows)
        return self._insert_rows(session, at, rows)

    def _insert_rows(
        self, session: Session, at: datetime | None, rows: list[dict[str, Any]]
    ) -> list[EnqueuedItem]:
        inserted = self._insert(session, at, rows, targeted=False)
        if len(inserted) == len(rows):  # every row is new (so no event_id repeats)
            results = [
                EnqueuedItem(inserted[row["event_id"]], row["event_id"], True) for row in rows
            ]
        else:
            results = self._resolve(session, at, rows, inserted)
        if inserted and self.notify and session.get_bind().dialect.name == "postgresql":
            session.execute(sql.notify())
        return results

    def _resolve(
        self,
        session: Session,
        at: datetime | None,
        rows: list[dict[str, Any]],
        inserted: dict[uuid.UUID, int],
    ) -> list[EnqueuedItem]:
        """The results when some rows were skipped as taken: their holders' ids, read (and
        inserted again if the holder vanished meanwhile). ``inserted`` grows in place."""
        ids = {**self._existing(session, rows, inserted), **inserted}
        for _ in range(_VANISHED_RETRIES):
            # Skipped as taken, yet no row holds it: the holder was purged or cleaned up
            # between our INSERT and the look-up (or, on PostgreSQL, the row hit another
            # unique index: the targeted retry raises for that one instead).
            vanished: dict[uuid.UUID, dict[str, Any]] = {}
            for row in rows:
                if row["event_id"] not in ids:
                    vanished.setdefault(row["event_id"], row)  # the first mention, as before
            if not vanished:
                break
            again = list(vanished.values())
            retried = self._insert(session, at, again, targeted=True)
            inserted.update(retried)
            ids.update(retried)
            ids.update(self._existing(session, again, ids))
        else:
            missing = next(row["event_id"] for row in rows if row["event_id"] not in ids)
            raise EnqueueRaceError(missing, _VANISHED_RETRIES)
        results, reported = [], set()
        for row in rows:
            event_id = row["event_id"]
            # The first mention of a newly inserted event_id created it; repeats did not.
            created = event_id in inserted and event_id not in reported
            reported.add(event_id)
            results.append(EnqueuedItem(ids[event_id], event_id, created))
        return results

    def _insert(
        self,
        session: Session,
        at: datetime | None,
        rows: list[dict[str, Any]],
        *,
        targeted: bool,
    ) -> dict[uuid.UUID, int]:
        """Insert the rows, skipping taken event_ids; the ids of those inserted.

        ``targeted`` (PostgreSQL): the rare retry, which names the conflict it expects
        (event_id on the plain table; on the partitioned one the trigger does), so that any
        other conflict raises instead of being skipped.
        """
        bind_dialect = session.get_bind().dialect
        dialect = bind_dialect.name
        if dialect == "postgresql" and not targeted and len(rows) >= _COPY_FROM_ROWS:
            copier = _psycopg_connection(session)
            if copier is not None:  # psycopg 3, sync: COPY through a staging table
                return _insert_by_copy(session, copier, rows, at is None)
        if dialect == "postgresql":
            target: bool | None = False
            if targeted:
                from retryqueue.migrations import partitioning  # brings alembic: rare path

                target = None if partitioning.is_partitioned(session.connection()) else True
            insert_json = sql.insert_items_json(at is None, target)
            inserted: dict[uuid.UUID, int] = {}
            for payload in sql.json_payloads(rows, bind_dialect):
                inserted.update(
                    (event_id, item_id)
                    for item_id, event_id in session.execute(insert_json, {"rows": payload})
                )
            return inserted
        if sql.has_returning(dialect):
            return {
                event_id: item_id
                for item_id, event_id in session.execute(sql.insert_items(dialect, at), rows)
            }
        return self._insert_without_returning(session, dialect, at, rows)

    @staticmethod
    def _existing(
        session: Session, rows: list[dict[str, Any]], known: Mapping[uuid.UUID, int]
    ) -> dict[uuid.UUID, int]:
        """The ids of the rows already holding the event_ids that ``known`` lacks."""
        missing = list({row["event_id"] for row in rows if row["event_id"] not in known})
        if not missing:
            return {}
        stmt = sql.existing_by_event_ids(missing)
        return {event_id: item_id for item_id, event_id in session.execute(stmt)}

    @staticmethod
    def _insert_without_returning(
        session: Session, dialect: str, at: datetime | None, rows: list[dict[str, Any]]
    ) -> dict[uuid.UUID, int]:
        # MySQL/MariaDB: no INSERT ... RETURNING. The event_ids already present are read
        # first (a plain read: no gap locks); after the insert, a locking read (which sees
        # rows other transactions committed meanwhile) gives every id. Caveat: an event_id
        # that a concurrent transaction inserts between the two reads counts as ours.
        event_ids = list({row["event_id"] for row in rows})
        before = {event_id for _, event_id in session.execute(sql.existing_by_event_ids(event_ids))}
        session.execute(sql.insert_items(dialect, at), rows)
        return {
            event_id: item_id
            for item_id, event_id in session.execute(sql.enqueued_by_event_ids(event_ids))
            if event_id not in before
        }


def _psycopg_connection(session: Session) -> Any:
    """The session's psycopg 3 (sync) connection, or None (another driver, or async)."""
    try:
        import psycopg
    except ImportError:
        return None
    raw = session.connection().connection.driver_connection
    return raw if isinstance(raw, psycopg.Connection) else None


def _insert_by_copy(
    session: Session, raw: Any, rows: list[dict[str, Any]], server_clock: bool
) -> dict[uuid.UUID, int]:
    """PostgreSQL with psycopg 3, in the caller's transaction: COPY the rows into a
    temporary staging table, then one INSERT ... SELECT (ON CONFLICT DO NOTHING) moves them
    into the queue. Returns {event_id: id} of the rows inserted."""
    import psycopg

    connection = _core(session)
    dialect = connection.dialect
    create, copy_rows = sql.staging_statements(server_clock, dialect)
    connection.exec_driver_sql(create)
    try:
        with raw.cursor() as cursor, cursor.copy(copy_rows) as copy:
            for values in sql.staged_rows(rows, dialect, server_clock):
                copy.write_row(values)
    except psycopg.Error as exc:
        raise database_error("enqueue_many", exc) from exc
    return {
        event_id: item_id
        for item_id, event_id in connection.execute(sql.insert_items_staged(server_clock))
    }
