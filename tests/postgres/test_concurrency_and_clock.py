"""PostgreSQL only: concurrent acquisition, and the database clock against skewed hosts."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import NewItem, RetryQueue, RetryStatus
from retryqueue.models import RetryHistory, RetryItem


@pytest.fixture
def backend() -> str:
    """These tests run on PostgreSQL only."""
    return "postgresql"


class SkewedClock:
    """A host clock that is off by a fixed amount (what a misconfigured host sees)."""

    def __init__(self, skew: timedelta) -> None:
        self.skew = skew

    def now(self) -> datetime:
        return datetime.now(UTC) + self.skew


class TestConcurrentWorkers:
    """SKIP LOCKED: concurrent workers never acquire the same item."""

    def test_eight_workers_acquire_every_item_exactly_once(
        self, engine: Engine, sessions: sessionmaker[Session]
    ) -> None:
        queue = RetryQueue()
        with sessions.begin() as session:
            queue.enqueue_many(session, [NewItem("load", {"i": i}) for i in range(2000)])
        acquired: list[list[int]] = [[] for _ in range(8)]
        errors: list[BaseException] = []
        start = threading.Barrier(8)

        def work(index: int) -> None:
            try:
                start.wait()
                while True:
                    with sessions.begin() as session:
                        batch = queue.acquire(session, f"worker-{index}", batch_size=10)
                        if not batch:
                            return
                        acquired[index].extend(c.id for c in batch)
                        queue.complete_many(session, batch)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors
        every = [item_id for ids in acquired for item_id in ids]
        assert len(every) == 2000
        assert len(set(every)) == 2000
        assert sum(1 for ids in acquired if ids) > 1  # the work really was shared
        with sessions() as session:
            statuses = Counter(session.scalars(select(RetryItem.status)))
            completions = session.scalar(
                select(func.count())
                .select_from(RetryHistory)
                .where(RetryHistory.status == "completed")
            )
            completed_twice = session.scalars(
                select(RetryHistory.retry_queue_id)
                .where(RetryHistory.status == "completed")
                .group_by(RetryHistory.retry_queue_id)
                .having(func.count() > 1)
            ).all()
        assert statuses == {RetryStatus.COMPLETED: 2000}
        assert completions == 2000
        assert completed_twice == []


class TestDatabaseClock:
    """On PostgreSQL, due times and lock expiry come from the server's clock."""

    def test_a_fast_host_clock_does_not_take_items_early(
        self, sessions: sessionmaker[Session]
    ) -> None:
        server_clock = RetryQueue()
        with sessions.begin() as session:
            server_clock.enqueue(session, "later", {}, delay=timedelta(minutes=30))
        fast_host = RetryQueue(clock=SkewedClock(timedelta(hours=1)))
        with sessions.begin() as session:  # the hazard is real for a host-clock queue ...
            assert len(fast_host.acquire(session, "fast-host")) == 1
            session.rollback()
        with sessions.begin() as session:  # ... and absent on the database clock
            assert server_clock.acquire(session, "any-host") == []

    def test_a_fast_host_clock_does_not_steal_live_locks(
        self, sessions: sessionmaker[Session]
    ) -> None:
        server_clock = RetryQueue()
        with sessions.begin() as session:
            server_clock.enqueue(session, "busy", {})
        with sessions.begin() as session:
            (claimed,) = server_clock.acquire(session, "owner", lock_timeout=300)
        fast_host = RetryQueue(clock=SkewedClock(timedelta(hours=1)))
        with sessions.begin() as session:  # a host-clock queue would break the live lock
            fast_host.acquire(session, "thief", lock_timeout=300)
            stolen = session.get_one(RetryItem, claimed.id)
            assert (stolen.locked_by, stolen.last_error_code) == (None, "LOCK_EXPIRED")
            session.rollback()
        with sessions.begin() as session:
            assert server_clock.acquire(session, "thief", lock_timeout=300) == []
        with sessions.begin() as session:
            assert server_clock.complete(session, claimed)

    def test_times_written_come_from_the_server(self, sessions: sessionmaker[Session]) -> None:
        queue = RetryQueue()
        with sessions.begin() as session:
            server_now = session.scalar(select(func.now()))
            result = queue.enqueue(session, "e", {}, delay=90)
        with sessions() as session:
            row = session.get_one(RetryItem, result.id)
        assert row.created_at == server_now  # transaction time of the enqueuing transaction
        assert row.next_retry_at == server_now + timedelta(seconds=90)
        assert row.expires_at == server_now + timedelta(days=7)
