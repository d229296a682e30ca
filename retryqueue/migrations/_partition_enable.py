"""Converting ``daz_retry_queue`` into monthly partitions: :func:`enable`, in one
transaction. What it builds (the two-column primary key, the event-key table and its
triggers, the partitioned indexes) is described in :mod:`retryqueue.migrations.partitioning`,
which re-exports the public names; private.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, Table, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateIndex

from retryqueue.errors import database_error
from retryqueue.migrations import _preserved as preserved
from retryqueue.migrations._partition_months import (
    DEFAULT_PARTITION,
    KEYS_TABLE,
    QUEUE,
    PartitioningError,
    create_partitions,
    is_partitioned,
    quote_name,
)
from retryqueue.models import RetryItem

__all__ = ["REPLACED_INDEXES", "EnableResult", "enable"]

_RENAMED = f"{QUEUE}_unpartitioned"
_UNIQUE_EVENT_ID = "uq_retry_queue_event_id"
_EVENT_ID_INDEX = "idx_retry_queue_event_id"
_CLAIM_KEY = "daz_retry_claim_event_key"
_RELEASE_KEYS = "daz_retry_release_event_keys"
_FORGET_KEYS = "daz_retry_forget_event_keys"
REPLACED_INDEXES = frozenset({_UNIQUE_EVENT_ID, _EVENT_ID_INDEX})
"""The model's unique event_id index and the plain one that stands in for it when partitioned."""


@dataclass(frozen=True, slots=True)
class EnableResult:
    """The outcome of :func:`enable`: rows moved and partitions created."""

    rows_copied: int
    partitions: tuple[str, ...]


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
    key = quote_name(connection, primary_key)
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
