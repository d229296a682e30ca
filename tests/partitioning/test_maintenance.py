"""Creating months ahead, dropping months past the retention, and cleanup by drop."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import CleanupResult, ItemFilter, ManualClock, RetryQueue, RetryStatus, migrations
from retryqueue.migrations import partitioning
from tests.partitioning.conftest import NOW, Populator, at

RETENTION = 60 * 86400.0  # cutoff 2026-04-16: January to March are past the retention
FINISHED = (RetryStatus.COMPLETED, RetryStatus.FAILED, RetryStatus.DEAD_LETTER)


@pytest.fixture
def partitioned(pg_engine: Engine) -> Engine:
    """The test database, partitioned from January 2026 to three months after NOW."""
    migrations.enable_partitioning(pg_engine, now=NOW)
    with pg_engine.begin() as connection:
        migrations.create_partitions(connection, now=NOW, start=at(2026, 1))
    return pg_engine


def names(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return [part.name for part in partitioning.partitions(connection)]


class Months:
    """January: finished only. February: one item still pending. March: one item requeued
    and finished in June. April: finished before the cutoff, but April is not past it.
    June: every status."""

    def __init__(self, populate: Populator, sessions: sessionmaker[Session]) -> None:
        self.january = [populate.item(status, at(2026, 1)) for status in FINISHED]
        self.february = [populate.item(status, at(2026, 2)) for status in FINISHED]
        self.march = [populate.item(status, at(2026, 3)) for status in FINISHED]
        queue = RetryQueue(clock=ManualClock(at(2026, 6, 1)))
        with sessions.begin() as session:
            queue.requeue(session, ItemFilter(ids=[self.march[0]], statuses=("completed",)))
        with sessions.begin() as session:
            (item,) = queue.acquire(session, "w")
            queue.complete(session, item)
        self.february_pending = populate.item(RetryStatus.PENDING, at(2026, 2))
        self.april = [populate.item(status, at(2026, 4)) for status in FINISHED]
        self.june = populate.every_status([at(2026, 6)])


class TestCreateAhead:
    """create_partitions is idempotent and rescues rows that landed in the default."""

    def test_idempotent(self, partitioned: Engine) -> None:
        with partitioned.begin() as connection:
            assert migrations.create_partitions(connection, now=NOW) == []
            made = migrations.create_partitions(connection, months_ahead=5, now=NOW)
            assert made == ["daz_retry_queue_p2026_10", "daz_retry_queue_p2026_11"]
            assert migrations.create_partitions(connection, months_ahead=5, now=NOW) == []

    def test_rows_in_the_default_partition_move_to_their_month(
        self, partitioned: Engine, populate: Populator, sessions: sessionmaker[Session]
    ) -> None:
        event_id = uuid.uuid4()
        item = populate.item(RetryStatus.PENDING, at(2027, 1), event_id=event_id)
        with partitioned.begin() as connection:
            made = migrations.create_partitions(connection, months_ahead=1, now=at(2026, 12))
        assert made == ["daz_retry_queue_p2026_12", "daz_retry_queue_p2027_01"]
        with partitioned.connect() as connection:
            where = connection.execute(
                text("SELECT tableoid::regclass::text FROM daz_retry_queue WHERE id = :i"),
                {"i": item},
            ).scalar_one()
        assert where == "daz_retry_queue_p2027_01"
        with sessions.begin() as session:
            again = RetryQueue(clock=ManualClock(NOW)).enqueue(session, "a", {}, event_id=event_id)
        assert not again.created and again.id == item


class TestDropPastRetention:
    """Only months past the retention whose items are all finished (before the cutoff) go."""

    def test_drops_only_finished_old_months(
        self, partitioned: Engine, populate: Populator, sessions: sessionmaker[Session]
    ) -> None:
        months = Months(populate, sessions)
        before = populate.statuses()
        with partitioned.connect() as connection:
            plan = migrations.drop_partitions(connection, RETENTION, now=NOW, dry_run=True)
            connection.rollback()
        assert populate.statuses() == before
        assert [(each.name, each.droppable) for each in plan] == [
            ("daz_retry_queue_p2026_01", True),
            ("daz_retry_queue_p2026_02", False),
            ("daz_retry_queue_p2026_03", False),
        ]
        assert (plan[1].live, plan[2].recent) == (1, 1)
        with partitioned.begin() as connection:
            done = migrations.drop_partitions(connection, RETENTION, now=NOW)
        assert [(each.name, each.dropped, each.rows) for each in done] == [
            ("daz_retry_queue_p2026_01", True, 3),
            ("daz_retry_queue_p2026_02", False, 4),
            ("daz_retry_queue_p2026_03", False, 3),
        ]
        assert "daz_retry_queue_p2026_01" not in names(partitioned)
        assert set(before) - set(populate.statuses()) == set(months.january)

    def test_event_ids_of_a_dropped_month_are_free_again(
        self, partitioned: Engine, populate: Populator, sessions: sessionmaker[Session]
    ) -> None:
        event_id = uuid.uuid4()
        populate.item(RetryStatus.COMPLETED, at(2026, 1), event_id=event_id)
        with partitioned.begin() as connection:
            done = migrations.drop_partitions(connection, RETENTION, now=NOW)
            left = connection.execute(text("SELECT count(*) FROM daz_retry_event_keys"))
            assert [(each.rows, each.dropped) for each in done] == [(1, True), (0, True), (0, True)]
            assert left.scalar_one() == 0
        with sessions.begin() as session:
            again = RetryQueue(clock=ManualClock(NOW)).enqueue(session, "a", {}, event_id=event_id)
        assert again.created

    def test_a_caller_that_stops_iterating_leaves_no_keys_behind(
        self, partitioned: Engine, populate: Populator, sessions: sessionmaker[Session]
    ) -> None:
        populate.item(RetryStatus.COMPLETED, at(2026, 1))
        populate.item(RetryStatus.COMPLETED, at(2026, 2))
        with partitioned.connect() as connection:
            first = next(partitioning.iter_drop_partitions(connection, RETENTION, now=NOW))
            connection.commit()  # and walks away: the generator is never resumed
        assert first.dropped
        with sessions() as session:
            parts = RetryQueue(clock=ManualClock(NOW)).iter_cleanup(session, 60)
            part = next(p for p in parts if p.partitions_dropped)  # then stops iterating
            session.commit()
        assert part.partitions_dropped == 1
        with partitioned.connect() as connection:
            left = connection.execute(text("SELECT count(*) FROM daz_retry_event_keys"))
            assert left.scalar_one() == 0

    def test_a_busy_queue_keeps_the_month(
        self, partitioned: Engine, populate: Populator, sessions: sessionmaker[Session]
    ) -> None:
        populate.item(RetryStatus.COMPLETED, at(2026, 1))
        with sessions() as reader:
            reader.execute(text("SELECT count(*) FROM daz_retry_queue"))  # holds a lock
            with partitioned.begin() as connection:
                kept, *_ = partitioning.iter_drop_partitions(
                    connection, RETENTION, now=NOW, lock_timeout_seconds=0.2
                )
                timeout = connection.execute(text("SHOW lock_timeout")).scalar_one()
        assert not kept.dropped and "lock timeout" in (kept.reason or "")
        assert timeout == "0"  # the caller's setting is back
        assert "daz_retry_queue_p2026_01" in names(partitioned)


class TestCleanupByDrop:
    """RetryQueue.cleanup drops months, then DELETEs only in the old months it had to keep."""

    def test_counts(
        self, partitioned: Engine, populate: Populator, sessions: sessionmaker[Session]
    ) -> None:
        months = Months(populate, sessions)
        queue = RetryQueue(clock=ManualClock(NOW))
        total = CleanupResult()
        with sessions() as session:
            for part in queue.iter_cleanup(session, retention_days=60, batch_size=2):
                session.commit()
                total = total + part
        assert total.partitions_dropped == 1
        # January by drop (3); February's and March's old finished rows by DELETE (3 + 2).
        assert total.deleted_count == 3 + 3 + 2
        left = set(populate.statuses())
        assert left == {
            months.february_pending,
            months.march[0],
            *months.april,
            *months.june,
        }
        with partitioned.connect() as connection:
            keys = connection.execute(text("SELECT count(*) FROM daz_retry_event_keys"))
            assert keys.scalar_one() == len(left)

    def test_plain_table_cleanup_is_unchanged(
        self, pg_engine: Engine, populate: Populator, sessions: sessionmaker[Session]
    ) -> None:
        populate.item(RetryStatus.COMPLETED, at(2026, 4))
        with sessions.begin() as session:
            total = RetryQueue(clock=ManualClock(NOW)).cleanup(session, retention_days=60)
        assert (total.deleted_count, total.partitions_dropped) == (1, 0)


def test_retention_boundary_is_a_month_start() -> None:
    assert partitioning.retention_boundary(NOW, RETENTION) == at(2026, 4, 1).replace(hour=0)
    assert partitioning.month_start(NOW + timedelta(days=20)) == at(2026, 7, 1).replace(hour=0)
