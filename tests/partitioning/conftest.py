"""Fixtures for the partitioning tests: a fresh PostgreSQL database per test, at head."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import ManualClock, RetryQueue, RetryStatus, create_engine, migrations
from retryqueue.models import RetryItem
from tests.support.servers import PostgresServer

# "Now" of every test: the partition decisions and the queue use this clock, not the host's.
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


@pytest.fixture
def pg_engine(pg_server: PostgresServer) -> Iterator[Engine]:
    """An engine on a new database migrated to head (dropped afterwards)."""
    url = pg_server.create_database("rq_partition")
    engine = create_engine(url, pool_size=5, max_overflow=5)
    migrations.upgrade(engine)
    yield engine
    engine.dispose()
    pg_server.drop_database(url)


@pytest.fixture
def sessions(pg_engine: Engine) -> sessionmaker[Session]:
    """Sessions on the test database."""
    return sessionmaker(pg_engine, expire_on_commit=False)


@dataclass
class Populator:
    """Puts items into given states, created at given instants, through the queue API."""

    sessions: sessionmaker[Session]

    def item(self, status: RetryStatus, created_at: datetime, *, event_id: Any = None) -> int:
        """One item in ``status``, created (and finished, if it is) at ``created_at``."""
        queue = RetryQueue(clock=ManualClock(created_at))
        with self.sessions.begin() as session:
            item_id = queue.enqueue(
                session,
                "chat.message",
                {"text": "hello", "at": created_at.isoformat()},
                plugin_name="slack",
                max_retries=0,
                retry_delay_seconds=0,
                event_id=event_id,
                ttl=timedelta(days=3650),
            ).id
        if status is RetryStatus.PENDING:
            return item_id
        with self.sessions.begin() as session:
            claimed = queue.acquire(session, "seed", batch_size=100, lock_timeout=1e7)
            (mine,) = [item for item in claimed if item.id == item_id]
            others = [item for item in claimed if item.id != item_id]
            queue.release(
                session,
                "seed",
                item_ids=[item.id for item in others],
                lease_token=mine.lease_token,
            )
            if status is RetryStatus.COMPLETED:
                queue.complete(session, mine)
            elif status is RetryStatus.FAILED:
                queue.fail(session, mine, error_message="no", retryable=False)
            elif status is RetryStatus.DEAD_LETTER:
                queue.fail(session, mine, error_message="boom")
        return item_id

    def every_status(self, months: list[datetime]) -> list[int]:
        """One item of each status in each of ``months``."""
        return [self.item(status, month) for month in months for status in RetryStatus]

    def rows(self) -> list[tuple[Any, ...]]:
        """Every queue row, every column, by id."""
        columns = list(RetryItem.__table__.columns)
        with self.sessions() as session:
            return [tuple(row) for row in session.execute(select(*columns).order_by(RetryItem.id))]

    def statuses(self) -> dict[int, RetryStatus]:
        """Every item's status by id."""
        with self.sessions() as session:
            rows = session.execute(select(RetryItem.id, RetryItem.status)).all()
        return {item_id: RetryStatus(status) for item_id, status in rows}


@pytest.fixture
def populate(sessions: sessionmaker[Session]) -> Populator:
    """A populator on the test database."""
    return Populator(sessions)


def at(year: int, month: int, day: int = 10) -> datetime:
    """Noon UTC on a day (the 10th by default)."""
    return datetime(year, month, day, 12, 0, tzinfo=UTC)
