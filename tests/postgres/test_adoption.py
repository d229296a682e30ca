"""Adopting an existing deployment: the reference schema built by hand-written DDL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker

from retryqueue import ItemFilter, RetryQueue, RetryStatus, create_engine, migrations
from retryqueue.migrations import partitioning
from retryqueue.models import RetryItem
from tests.cli.conftest import invoke_cli
from tests.support.revisions import after
from tests.support.servers import PostgresServer

# What the reference script (scripts/create_retry_queue_schema.sql) creates, as a database
# it made shows it: PostgreSQL's default names for the keys and the check, the script's own
# index names, its comments, and its functions and views (written here in short; the
# library uses none of them, but they must not get in the way of the upgrade or of
# partitioning, which has to rebuild the views over the new table).
REFERENCE_DDL = """
CREATE TYPE retry_status AS ENUM ('pending', 'processing', 'completed', 'failed', 'dead_letter');

CREATE TABLE daz_retry_queue (
    id BIGSERIAL PRIMARY KEY,
    event_id UUID NOT NULL DEFAULT gen_random_uuid(),
    event_type VARCHAR(255) NOT NULL,
    channel_name VARCHAR(255),
    plugin_name VARCHAR(255),
    event_data JSONB NOT NULL,
    event_metadata JSONB,
    retry_count INTEGER NOT NULL DEFAULT 0,
    max_retries INTEGER NOT NULL DEFAULT 3,
    retry_delay_seconds INTEGER NOT NULL DEFAULT 60,
    backoff_multiplier NUMERIC(3,2) NOT NULL DEFAULT 2.0,
    status retry_status NOT NULL DEFAULT 'pending',
    error_message TEXT,
    last_error_code VARCHAR(50),
    created_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
    next_retry_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
    last_attempted_at TIMESTAMPTZ,
    completed_at TIMESTAMPTZ,
    expires_at TIMESTAMPTZ NOT NULL DEFAULT (CURRENT_TIMESTAMP + INTERVAL '7 days'),
    locked_by VARCHAR(255),
    locked_at TIMESTAMPTZ,
    priority INTEGER NOT NULL DEFAULT 5 CHECK (priority >= 1 AND priority <= 10),
    correlation_id VARCHAR(255),
    tags TEXT[]
);

CREATE INDEX idx_retry_queue_status_next_retry ON daz_retry_queue (status, next_retry_at)
    WHERE status IN ('pending', 'processing');
CREATE INDEX idx_retry_queue_channel_status ON daz_retry_queue (channel_name, status);
CREATE INDEX idx_retry_queue_plugin_status ON daz_retry_queue (plugin_name, status);
CREATE INDEX idx_retry_queue_correlation_id ON daz_retry_queue (correlation_id)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX idx_retry_queue_event_type ON daz_retry_queue (event_type);
CREATE INDEX idx_retry_queue_created_at ON daz_retry_queue (created_at);
CREATE INDEX idx_retry_queue_priority_status
    ON daz_retry_queue (priority DESC, status, next_retry_at) WHERE status = 'pending';
CREATE INDEX idx_retry_queue_locked_by ON daz_retry_queue (locked_by, locked_at)
    WHERE locked_by IS NOT NULL;
CREATE INDEX idx_retry_queue_tags ON daz_retry_queue USING GIN (tags) WHERE tags IS NOT NULL;
CREATE INDEX idx_retry_queue_expired ON daz_retry_queue (expires_at)
    WHERE status NOT IN ('completed', 'dead_letter');

CREATE FUNCTION calculate_next_retry(retry_count INTEGER, retry_delay_seconds INTEGER,
                                     backoff_multiplier NUMERIC)
RETURNS TIMESTAMPTZ LANGUAGE sql AS $$
    SELECT now() + make_interval(secs => $2 * power($3, $1))
$$;
CREATE FUNCTION acquire_retry_items(worker_id VARCHAR(255), batch_size INTEGER DEFAULT 10,
                                    lock_timeout_seconds INTEGER DEFAULT 300)
RETURNS SETOF BIGINT LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY UPDATE daz_retry_queue SET status = 'processing', locked_by = $1,
        locked_at = now()
    WHERE id IN (SELECT q.id FROM daz_retry_queue q WHERE q.status = 'pending'
                 ORDER BY q.priority DESC LIMIT $2 FOR UPDATE SKIP LOCKED)
    RETURNING id;
END $$;
CREATE FUNCTION complete_retry_item(item_id BIGINT, worker_id VARCHAR(255))
RETURNS BOOLEAN LANGUAGE plpgsql AS $$
BEGIN
    UPDATE daz_retry_queue SET status = 'completed', completed_at = now(), locked_by = NULL
    WHERE id = $1 AND locked_by = $2;
    RETURN FOUND;
END $$;
CREATE FUNCTION fail_retry_item(item_id BIGINT, worker_id VARCHAR(255), error_msg TEXT,
                                error_code VARCHAR(50) DEFAULT NULL)
RETURNS BOOLEAN LANGUAGE plpgsql AS $$
BEGIN
    UPDATE daz_retry_queue SET status = 'pending', retry_count = retry_count + 1,
        error_message = $3, last_error_code = $4, locked_by = NULL
    WHERE id = $1 AND locked_by = $2;
    RETURN FOUND;
END $$;
CREATE FUNCTION cleanup_retry_queue(retention_days INTEGER DEFAULT 7)
RETURNS BIGINT LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM daz_retry_queue WHERE status IN ('completed', 'dead_letter')
                  AND created_at < now() - make_interval(days => $1) RETURNING 1)
    SELECT count(*) FROM gone
$$;

CREATE VIEW daz_retry_queue_stats AS
    SELECT status, event_type, plugin_name, count(*) AS count,
           count(*) FILTER (WHERE locked_by IS NOT NULL) AS locked_count
    FROM daz_retry_queue GROUP BY status, event_type, plugin_name;
CREATE VIEW daz_retry_queue_alerts AS
    SELECT id, event_type, status,
           CASE WHEN status = 'dead_letter' THEN 'dead letter'
                ELSE 'stale lock' END AS alert_reason
    FROM daz_retry_queue
    WHERE status = 'dead_letter' OR locked_at < now() - INTERVAL '1 hour';

CREATE TABLE daz_retry_history (
    id BIGSERIAL PRIMARY KEY,
    retry_queue_id BIGINT NOT NULL,
    event_id UUID NOT NULL,
    attempt_number INTEGER NOT NULL,
    status VARCHAR(50) NOT NULL,
    error_message TEXT,
    error_code VARCHAR(50),
    worker_id VARCHAR(255),
    attempted_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
    duration_ms INTEGER
);
CREATE INDEX idx_retry_history_queue_id ON daz_retry_history (retry_queue_id);
CREATE INDEX idx_retry_history_event_id ON daz_retry_history (event_id);
CREATE INDEX idx_retry_history_attempted_at ON daz_retry_history (attempted_at);

COMMENT ON TABLE daz_retry_queue IS
    'Main retry queue for failed operations with exponential backoff support';
COMMENT ON COLUMN daz_retry_queue.event_id IS
    'Unique identifier for the event, useful for deduplication';
COMMENT ON COLUMN daz_retry_queue.priority IS 'Priority level 1-10, where 10 is highest priority';
COMMENT ON COLUMN daz_retry_queue.backoff_multiplier IS
    'Multiplier for exponential backoff calculation';
"""

# The objects the issue lists, as a database made by the script shows them.
REFERENCE_NAMES = {
    "idx_retry_queue_priority_status",  # replaced by idx_retry_queue_claim in rq0003
    "idx_retry_queue_locked_by",
    "idx_retry_queue_expired",
    "daz_retry_queue_pkey",
    "daz_retry_history_pkey",
    "daz_retry_queue_priority_check",
}

# Rows as the old system left them: one in every status, written by plain SQL.
LEGACY_ROWS = """
INSERT INTO daz_retry_queue (event_type, channel_name, plugin_name, event_data, priority, tags)
VALUES ('cytube.event.chatMsg', 'RIFFTRAX_MST3K', 'sql', '{"message": "test"}', 7, '{chat}');
INSERT INTO daz_retry_queue (event_type, plugin_name, event_data, status, locked_by, locked_at)
VALUES ('cytube.event.media', 'media', '{"id": 1}', 'processing', 'worker-001',
        CURRENT_TIMESTAMP - INTERVAL '2 hours');
INSERT INTO daz_retry_queue (event_type, event_data, status, completed_at, created_at)
VALUES ('cytube.event.chatMsg', '{"old": true}', 'completed',
        CURRENT_TIMESTAMP - INTERVAL '30 days', CURRENT_TIMESTAMP - INTERVAL '30 days');
INSERT INTO daz_retry_queue (event_type, event_data, status, retry_count, error_message,
                             last_error_code)
VALUES ('cytube.event.pm', '{"to": "x"}', 'dead_letter', 3, 'Connection timeout', 'TIMEOUT');
INSERT INTO daz_retry_queue (event_type, event_data, status, error_message)
VALUES ('cytube.event.pm', '{"to": "y"}', 'failed', 'bad request');
"""


@pytest.fixture
def legacy_engine(pg_server: PostgresServer) -> Iterator[Engine]:
    """A fresh database holding the reference schema and legacy rows, not yet adopted."""
    url = pg_server.create_database("rq_adopt")
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(REFERENCE_DDL)
        connection.exec_driver_sql(LEGACY_ROWS)
    yield engine
    engine.dispose()
    pg_server.drop_database(url)


def names(engine: Engine) -> set[str]:
    """Index and constraint names of the two queue tables."""
    with engine.connect() as connection:
        return set(
            connection.exec_driver_sql(
                "SELECT indexname FROM pg_indexes WHERE tablename IN "
                "('daz_retry_queue', 'daz_retry_history') UNION "
                "SELECT conname FROM pg_constraint WHERE conrelid IN "
                "('daz_retry_queue'::regclass, 'daz_retry_history'::regclass)"
            ).scalars()
        )


def schema_facts(engine: Engine) -> dict[str, set[tuple[str, ...]]]:
    """What a reader of ``\\d`` sees: indexes, constraints, comments, columns and types."""
    tables = "('daz_retry_queue'::regclass, 'daz_retry_history'::regclass)"
    queries = {
        "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN "
        "('daz_retry_queue', 'daz_retry_history')",
        "constraints": "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
        f"WHERE conrelid IN {tables}",
        "comments": "SELECT c.relname, a.attname, col_description(c.oid, a.attnum) "
        "FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 "
        f"WHERE c.oid IN {tables} AND col_description(c.oid, a.attnum) IS NOT NULL "
        "UNION SELECT c.relname, '', obj_description(c.oid, 'pg_class') FROM pg_class c "
        f"WHERE c.oid IN {tables} AND obj_description(c.oid, 'pg_class') IS NOT NULL",
        "columns": "SELECT table_name, column_name, data_type, is_nullable, "
        "coalesce(numeric_precision::text, ''), coalesce(character_maximum_length::text, '') "
        "FROM information_schema.columns WHERE table_name IN "
        "('daz_retry_queue', 'daz_retry_history')",
    }
    with engine.connect() as connection:
        return {
            kind: {tuple(str(value) for value in row) for row in connection.exec_driver_sql(sql)}
            for kind, sql in queries.items()
        }


class TestReferenceSchema:
    """rq0001 creates what the reference script creates, object for object."""

    def test_rq0001_matches_the_script(
        self, legacy_engine: Engine, pg_server: PostgresServer
    ) -> None:
        assert names(legacy_engine) >= REFERENCE_NAMES
        url = pg_server.create_database("rq_fresh")
        fresh = create_engine(url)
        try:
            migrations.upgrade(fresh, "rq0001")
            assert schema_facts(fresh) == schema_facts(legacy_engine)
        finally:
            fresh.dispose()
            pg_server.drop_database(url)


class TestAdoption:
    """Stamp the first revision, upgrade, and the old rows work like new ones."""

    def test_existing_database_adopts_the_library(self, legacy_engine: Engine) -> None:
        # The two documented commands (docs/adoption.md), then the documented check.
        url = legacy_engine.url.render_as_string(hide_password=False)
        stamped = invoke_cli(url, "db", "stamp", "rq0001")
        assert stamped.exit_code == 0, stamped.output
        upgraded = invoke_cli(url, "db", "upgrade")
        assert upgraded.exit_code == 0, upgraded.output
        assert upgraded.stdout.strip().endswith("applied " + ", ".join(after("rq0001")))
        assert migrations.current(legacy_engine) == migrations.heads()
        assert migrations.differences(legacy_engine) == []

        sessions = sessionmaker(legacy_engine, expire_on_commit=False)
        queue = RetryQueue()
        with sessions() as session:
            by_status = {s.status: s.count for s in queue.stats(session)}
            reasons = {a.reason for a in queue.alerts(session)}
        assert by_status == dict.fromkeys(RetryStatus, 1)
        assert {"stale lock", "dead letter: manual intervention required"} <= reasons

        with sessions.begin() as session:
            (chat,) = queue.acquire(session, "new-worker", lock_timeout=300)
        assert chat.event_data == {"message": "test"} and chat.tags == ("chat",)
        assert chat.priority == 7
        with sessions.begin() as session:  # the old worker's lock was reclaimed
            media = session.scalars(
                select(RetryItem).where(RetryItem.event_type == "cytube.event.media")
            ).one()
            assert (media.status, media.retry_count) == (RetryStatus.PENDING, 1)
            assert queue.fail(session, chat, error_message="still down", error_code="TIMEOUT")
            assert queue.requeue(session, ItemFilter(statuses=[RetryStatus.DEAD_LETTER]))
        with sessions.begin() as session:
            (again,) = [
                c for c in queue.acquire(session, "new-worker") if c.event_type == "cytube.event.pm"
            ]
            assert queue.complete(session, again)
        with sessions.begin() as session:
            result = queue.cleanup(session, retention_days=7)
        assert result.deleted_count == 1  # the 30-day-old completed row
        with sessions() as session:
            statuses = sorted(s.status.value for s in queue.stats(session))
        assert statuses == ["completed", "failed", "pending", "pending"]

        # Partitioning on the adopted database: the key keeps its reference name, the
        # script's views are rebuilt over the new table, and the service goes on.
        partitioning.enable(legacy_engine)
        assert migrations.differences(legacy_engine) == []
        assert REFERENCE_NAMES - {"idx_retry_queue_priority_status"} <= names(legacy_engine)
        with legacy_engine.connect() as connection:
            stats = connection.exec_driver_sql(
                "SELECT sum(count) FROM daz_retry_queue_stats"
            ).scalar_one()
            comment = connection.exec_driver_sql(
                "SELECT obj_description('daz_retry_queue'::regclass, 'pg_class')"
            ).scalar_one()
        assert stats == 4
        assert comment == RetryItem.__table__.comment
        with sessions.begin() as session:
            queue.enqueue(session, "after.partitioning", {"n": 1})
        with sessions.begin() as session:
            taken = queue.acquire(session, "new-worker", batch_size=10)
            assert "after.partitioning" in {each.event_type for each in taken}

    def test_downgrade_to_base_removes_everything(self, legacy_engine: Engine) -> None:
        migrations.stamp(legacy_engine, "rq0001")
        migrations.upgrade(legacy_engine)
        migrations.downgrade(legacy_engine, "retryqueue@base")
        with legacy_engine.connect() as connection:
            tables = (
                connection.exec_driver_sql(
                    "select tablename from pg_tables where schemaname = 'public'"
                )
                .scalars()
                .all()
            )
            types = (
                connection.exec_driver_sql(
                    "select typname from pg_type where typname = 'retry_status'"
                )
                .scalars()
                .all()
            )
            leftovers = (
                connection.exec_driver_sql(
                    "select viewname from pg_views where viewname like 'daz_retry%%' union "
                    "select proname from pg_proc where proname like '%%retry%%'"
                )
                .scalars()
                .all()
            )
        assert set(tables) <= {"retryqueue_alembic_version"}
        assert types == []
        assert leftovers == []  # the script's views (they would block the drop), functions
