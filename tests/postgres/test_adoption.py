"""Adopting an existing deployment: the reference schema built by hand-written DDL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import sessionmaker

from retryqueue import ItemFilter, RetryQueue, RetryStatus, create_engine, migrations
from retryqueue.models import RetryItem
from tests.support.servers import PostgresServer

# What the reference script (scripts/create_retry_queue_schema.sql) creates.
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
CREATE INDEX idx_retry_queue_priority ON daz_retry_queue (priority DESC, status, next_retry_at)
    WHERE status = 'pending';
CREATE INDEX idx_retry_queue_locked ON daz_retry_queue (locked_by, locked_at)
    WHERE locked_by IS NOT NULL;
CREATE INDEX idx_retry_queue_tags ON daz_retry_queue USING GIN (tags) WHERE tags IS NOT NULL;
CREATE INDEX idx_retry_queue_expires_at ON daz_retry_queue (expires_at)
    WHERE status NOT IN ('completed', 'dead_letter');

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
"""

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


class TestAdoption:
    """Stamp the first revision, upgrade, and the old rows work like new ones."""

    def test_existing_database_adopts_the_library(self, legacy_engine: Engine) -> None:
        migrations.stamp(legacy_engine, "rq0001")
        migrations.upgrade(legacy_engine)
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
        assert set(tables) <= {"retryqueue_alembic_version"}
        assert types == []
