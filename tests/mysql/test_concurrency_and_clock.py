"""MySQL/MariaDB only: concurrent acquisition, and the UTC database clock."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import NewItem, RetryQueue, RetryStatus
from retryqueue.errors import DatabaseError
from retryqueue.models import RetryHistory, RetryItem

WORKERS = 8
ITEMS = 2000


@pytest.fixture
def backend() -> str:
    """These tests run on MySQL/MariaDB only (skipped without RETRYQUEUE_TEST_MYSQL_URL)."""
    return "mysql"


def is_deadlock(exc: BaseException) -> bool:
    """InnoDB error 1213: the transaction was rolled back and may simply be run again."""
    cause = getattr(exc.__cause__, "orig", None)
    return bool(getattr(cause, "args", (None,))[0] == 1213)


def drain(
    sessions: sessionmaker[Session], queue: RetryQueue, *, retry_deadlocks: bool
) -> tuple[list[list[int]], int]:
    """Eight threads acquire and complete in batches of 10 until nothing is left.

    Returns the ids each thread completed and the number of deadlocks retried (as the
    Worker does with any DatabaseError: back off, run the transaction again).
    """
    acquired: list[list[int]] = [[] for _ in range(WORKERS)]
    errors: list[BaseException] = []
    deadlocks: list[int] = []
    start = threading.Barrier(WORKERS)

    def work(index: int) -> None:
        try:
            start.wait()
            while True:
                try:
                    with sessions.begin() as session:
                        batch = queue.acquire(session, f"worker-{index}", batch_size=10)
                        if not batch:
                            return
                        queue.complete_many(session, batch)
                except DatabaseError as exc:
                    if not (retry_deadlocks and is_deadlock(exc)):
                        raise
                    deadlocks.append(index)
                    continue
                acquired[index].extend(c.id for c in batch)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert not errors, errors
    return acquired, len(deadlocks)


class TestConcurrentWorkers:
    """SKIP LOCKED plus update-by-claimed-ids: no item is ever acquired twice."""

    @pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ"])
    def test_eight_workers_acquire_every_item_exactly_once(
        self, engine: Engine, isolation: str
    ) -> None:
        """InnoDB may roll a claim back as a deadlock (often under REPEATABLE READ, rarely
        under READ COMMITTED, create_engine's default); retried, every item runs once."""
        sessions = sessionmaker(
            engine.execution_options(isolation_level=isolation), expire_on_commit=False
        )
        queue = RetryQueue()
        with sessions.begin() as session:
            queue.enqueue_many(session, [NewItem("load", {"i": i}) for i in range(ITEMS)])
        acquired, _deadlocks = drain(sessions, queue, retry_deadlocks=True)
        every = [item_id for ids in acquired for item_id in ids]
        assert len(every) == ITEMS
        assert len(set(every)) == ITEMS
        assert sum(1 for ids in acquired if ids) > 1  # the work really was shared
        with sessions() as session:
            statuses = Counter(session.scalars(select(RetryItem.status)))
            completed_twice = session.scalars(
                select(RetryHistory.retry_queue_id)
                .where(RetryHistory.status == "completed")
                .group_by(RetryHistory.retry_queue_id)
                .having(func.count() > 1)
            ).all()
            completions = session.scalar(
                select(func.count())
                .select_from(RetryHistory)
                .where(RetryHistory.status == "completed")
            )
        assert statuses == {RetryStatus.COMPLETED: ITEMS}
        assert completions == ITEMS
        assert completed_twice == []


class TestDatabaseClock:
    """The server clock is UTC_TIMESTAMP(6): the session time zone does not move it."""

    def test_due_times_ignore_the_session_time_zone(self, engine: Engine) -> None:
        @event.listens_for(engine, "connect")
        def far_east(dbapi_connection: object, record: object) -> None:
            cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
            cursor.execute("SET time_zone = '+09:00'")
            cursor.close()

        engine.dispose()  # new connections get the listener
        sessions = sessionmaker(engine, expire_on_commit=False)
        queue = RetryQueue()
        before = datetime.now(UTC)
        with sessions.begin() as session:
            item = queue.enqueue(session, "tz", {}, delay=timedelta(minutes=30))
        with sessions() as session:
            stored = session.get_one(RetryItem, item.id)
            assert abs(stored.created_at - before) < timedelta(minutes=1)
            assert abs(stored.next_retry_at - (before + timedelta(minutes=30))) < timedelta(
                minutes=1
            )
        with sessions.begin() as session:
            assert queue.acquire(session, "early") == []

    def test_microseconds_round_trip(self, engine: Engine) -> None:
        sessions = sessionmaker(engine, expire_on_commit=False)
        run_at = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
        with sessions.begin() as session:
            item = RetryQueue().enqueue(
                session, "precise", {}, run_at=run_at, expires_at=run_at + timedelta(days=1)
            )
        with sessions() as session:
            assert session.get_one(RetryItem, item.id).next_retry_at == run_at
