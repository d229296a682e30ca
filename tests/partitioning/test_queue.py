"""The queue on a partitioned table: idempotent enqueue across months, the whole lifecycle."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import ItemFilter, ManualClock, NewItem, RetryQueue, RetryStatus, migrations
from retryqueue.models import RetryItem
from tests.partitioning.conftest import NOW, Populator, at


@pytest.fixture
def partitioned(pg_engine: Engine) -> Engine:
    """The test database, partitioned from January 2026 to three months after NOW."""
    migrations.enable_partitioning(pg_engine, now=NOW)
    with pg_engine.begin() as connection:
        migrations.create_partitions(connection, now=NOW, start=at(2026, 1))
    return pg_engine


def keys(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(text("SELECT count(*) FROM daz_retry_event_keys")).scalar_one()
        )


class TestIdempotentEnqueue:
    """A known event_id is a no-op, whichever month the first item was created in."""

    def test_duplicate_in_a_later_month(
        self, partitioned: Engine, sessions: sessionmaker[Session]
    ) -> None:
        clock = ManualClock(at(2026, 2))
        queue = RetryQueue(clock=clock)
        event_id = uuid.uuid4()
        with sessions.begin() as session:
            first = queue.enqueue(session, "a", {}, event_id=event_id)
        clock.advance(timedelta(days=90))
        with sessions.begin() as session:
            again = queue.enqueue(session, "a", {"other": 1}, event_id=event_id)
            fresh = queue.enqueue(session, "a", {})
        assert first.created and fresh.created and not again.created
        assert again.id == first.id
        with sessions() as session:
            assert session.scalar(select(func.count()).select_from(RetryItem)) == 2

    def test_duplicates_within_one_bulk_insert(
        self, partitioned: Engine, sessions: sessionmaker[Session]
    ) -> None:
        queue = RetryQueue(clock=ManualClock(NOW))
        event_id = uuid.uuid4()
        with sessions.begin() as session:
            results = queue.enqueue_many(
                session,
                [queue_item(event_id), queue_item(event_id), queue_item(None)],
            )
        assert [result.created for result in results] == [True, False, True]
        assert results[0].id == results[1].id
        assert keys(partitioned) == 2

    def test_concurrent_duplicate_waits_and_is_skipped(
        self, partitioned: Engine, sessions: sessionmaker[Session]
    ) -> None:
        queue = RetryQueue(clock=ManualClock(NOW))
        event_id = uuid.uuid4()
        outcome: list[bool] = []
        with sessions.begin() as first:
            mine = queue.enqueue(first, "a", {}, event_id=event_id)

            def rival() -> None:
                with sessions.begin() as second:
                    outcome.append(queue.enqueue(second, "a", {}, event_id=event_id).created)

            thread = threading.Thread(target=rival)
            thread.start()
            thread.join(0.3)  # the rival blocks on the key until this transaction ends
            assert thread.is_alive()
        thread.join(10)
        assert mine.created and outcome == [False]

    def test_purged_event_id_can_be_enqueued_again(
        self, partitioned: Engine, sessions: sessionmaker[Session]
    ) -> None:
        queue = RetryQueue(clock=ManualClock(NOW))
        event_id = uuid.uuid4()
        with sessions.begin() as session:
            first = queue.enqueue(session, "a", {}, event_id=event_id)
        with sessions.begin() as session:
            assert queue.purge(session, [first.id]) == [first.id]
        assert keys(partitioned) == 0
        with sessions.begin() as session:
            again = queue.enqueue(session, "a", {}, event_id=event_id)
        assert again.created and again.id != first.id


def queue_item(event_id: uuid.UUID | None) -> NewItem:
    return NewItem("a", {}, event_id=event_id)


class TestLifecycle:
    """acquire, complete, fail, retry, dead letter, requeue and stats work unchanged."""

    def test_walk_through(self, partitioned: Engine, sessions: sessionmaker[Session]) -> None:
        clock = ManualClock(at(2026, 5, 31).replace(hour=23, minute=59))
        queue = RetryQueue(clock=clock)
        with sessions.begin() as session:
            good = queue.enqueue(session, "ok", {}, priority=9).id
            flaky = queue.enqueue(session, "flaky", {}, max_retries=1, retry_delay_seconds=60).id
        clock.advance(timedelta(minutes=2))  # into June: the retries cross the month
        with sessions.begin() as session:
            claimed = {item.id: item for item in queue.acquire(session, "w1", batch_size=10)}
            assert set(claimed) == {good, flaky}
            assert queue.complete(session, claimed[good])
            queue.fail(session, claimed[flaky], error_message="timeout")
        clock.advance(timedelta(minutes=5))
        with sessions.begin() as session:
            (retry,) = queue.acquire(session, "w2")
            assert retry.id == flaky and retry.attempt == 2
            queue.fail(session, retry, error_message="timeout again")
        with sessions() as session:
            statuses = {
                r.id: r.status for r in session.execute(select(RetryItem.id, RetryItem.status))
            }
            assert statuses == {good: RetryStatus.COMPLETED, flaky: RetryStatus.DEAD_LETTER}
            assert len(queue.history(session, flaky)) == 2
        with sessions.begin() as session:
            assert queue.requeue(session, ItemFilter()) == [flaky]
        with sessions.begin() as session:
            (again,) = queue.acquire(session, "w3")
            assert queue.complete(session, again)
            stats = [(row.status, row.event_type, row.count) for row in queue.stats(session)]
        assert sorted(stats) == [
            (RetryStatus.COMPLETED, "flaky", 1),
            (RetryStatus.COMPLETED, "ok", 1),
        ]

    def test_populated_months_are_claimed_in_priority_order(
        self, partitioned: Engine, populate: Populator, sessions: sessionmaker[Session]
    ) -> None:
        old = populate.item(RetryStatus.PENDING, at(2026, 1))
        new = populate.item(RetryStatus.PENDING, at(2026, 6))
        queue = RetryQueue(clock=ManualClock(NOW))
        with sessions.begin() as session:
            claimed = queue.acquire(session, "w", batch_size=10)
        assert [item.id for item in claimed] == [old, new]


class TestPlainTable:
    """The enqueue statement (ON CONFLICT DO NOTHING, no target) is still idempotent there."""

    def test_duplicate_event_id(self, pg_engine: Engine, sessions: sessionmaker[Session]) -> None:
        queue = RetryQueue(clock=ManualClock(NOW))
        event_id = uuid.uuid4()
        with sessions.begin() as session:
            first = queue.enqueue(session, "a", {}, event_id=event_id)
            again = queue.enqueue(session, "a", {}, event_id=event_id)
        assert first.created and not again.created and again.id == first.id
