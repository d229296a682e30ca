"""Retry deadlines on every backend: a time budget that is really used, then a dead letter
whose reason says the deadline was reached (not max retries, not expiry)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import ManualClock, NewItem, RetryQueue, RetryStatus
from retryqueue.errors import InvalidArgument
from retryqueue.metrics import QueueCollector
from retryqueue.models import RetryHistory, RetryItem
from retryqueue.policy import DEADLINE_REACHED, RETRY_PAST_DEADLINE, RETRY_PAST_EXPIRY
from retryqueue.worker import RetryLater, Router, Worker

SIX_HOURS = 6 * 3600
# 60 s base delay doubling: due 60, 180, 420, 900, 1,860, 3,780, 7,620, 15,300 s after
# enqueue; the next backoff would be due at 30,660 s, so that retry is moved up to the
# deadline (21,600 s), where the tenth attempt fails and the item is dead-lettered.
EXPECTED_OFFSETS = [0, 60, 180, 420, 900, 1860, 3780, 7620, 15300, SIX_HOURS]


def history(sessions: sessionmaker[Session], item_id: int) -> list[RetryHistory]:
    with sessions() as session:
        return list(
            session.scalars(
                select(RetryHistory)
                .where(RetryHistory.retry_queue_id == item_id)
                .order_by(RetryHistory.id)
            )
        )


def item(sessions: sessionmaker[Session], item_id: int) -> RetryItem:
    with sessions() as session:
        return session.get_one(RetryItem, item_id)


def fail_until_final(
    sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock, item_id: int
) -> list[float]:
    """Claim and fail the item at each due time; the attempt times, in seconds from start."""
    start = clock.now()
    attempts = []
    for _ in range(50):
        row = item(sessions, item_id)
        if row.status is not RetryStatus.PENDING:
            return attempts
        clock.set(max(clock.now(), row.next_retry_at))
        with sessions.begin() as session:
            (claimed,) = queue.acquire(session, "w")
            attempts.append((clock.now() - start).total_seconds())
            assert queue.fail(session, claimed, error_message="HTTP 502", error_code="HTTP_502")
    raise AssertionError("the item never reached a final state")


def assert_dead_at_deadline(
    sessions: sessionmaker[Session], item_id: int, attempts: list[float]
) -> None:
    assert attempts == EXPECTED_OFFSETS
    row = item(sessions, item_id)
    assert row.status is RetryStatus.DEAD_LETTER
    assert row.retry_count == len(EXPECTED_OFFSETS) - 1
    assert row.last_error_code == DEADLINE_REACHED
    rows = history(sessions, item_id)
    assert [entry.status for entry in rows] == ["retry_scheduled"] * 9 + ["dead_lettered"]
    last = rows[-1]
    assert last.attempt_number == len(EXPECTED_OFFSETS)
    assert last.error_code == DEADLINE_REACHED
    message = str(last.error_message)
    assert RETRY_PAST_DEADLINE in message
    assert "HTTP 502" in message and "HTTP_502" in message  # the handler's error is kept
    assert RETRY_PAST_EXPIRY not in message and "max" not in message


class TestSixHourBudget:
    """A 6-hour budget with a 60 s base delay is used to its end, then dead-lettered."""

    @pytest.mark.parametrize("how", ["retry_for", "deadline"])
    def test_dead_letter_at_the_deadline(
        self,
        sessions: sessionmaker[Session],
        queue: RetryQueue,
        clock: ManualClock,
        how: str,
    ) -> None:
        budget: dict[str, Any] = (
            {"retry_for": timedelta(hours=6)}
            if how == "retry_for"
            else {"deadline": clock.now() + timedelta(hours=6)}
        )
        with sessions.begin() as session:
            item_id = queue.enqueue(
                session, "e", {}, max_retries=100, retry_delay_seconds=60, **budget
            ).id
        assert item(sessions, item_id).retry_deadline == clock.now() + timedelta(hours=6)
        assert_dead_at_deadline(
            sessions, item_id, fail_until_final(sessions, queue, clock, item_id)
        )

    def test_max_retries_still_ends_it_first(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        with sessions.begin() as session:
            item_id = queue.enqueue(session, "e", {}, max_retries=2, retry_for=SIX_HOURS).id
        assert fail_until_final(sessions, queue, clock, item_id) == [0, 60, 180]
        row = item(sessions, item_id)
        assert row.status is RetryStatus.DEAD_LETTER and row.last_error_code == "HTTP_502"
        assert RETRY_PAST_DEADLINE not in str(history(sessions, item_id)[-1].error_message)

    def test_a_route_default_applies_to_items_without_a_deadline(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        def unavailable(job: object) -> None:
            raise ConnectionError("HTTP 502")

        router = Router()
        router.add("e", unavailable, retry_for=timedelta(hours=6))
        with sessions.begin() as session:
            item_id = queue.enqueue(session, "e", {}, max_retries=100).id
        worker = Worker(queue, sessions, router)
        start, attempts = clock.now(), []
        while item(sessions, item_id).status is RetryStatus.PENDING:
            clock.set(item(sessions, item_id).next_retry_at)
            attempts.append((clock.now() - start).total_seconds())
            worker.run_once()
        assert attempts == EXPECTED_OFFSETS
        row = item(sessions, item_id)
        assert row.status is RetryStatus.DEAD_LETTER
        assert row.last_error_code == DEADLINE_REACHED
        assert row.retry_deadline is None  # the route's default is not written to the item

    def test_retry_later_past_the_deadline_is_a_dead_letter(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        def come_back_tomorrow(job: object) -> None:
            raise RetryLater(timedelta(days=1))

        with sessions.begin() as session:
            item_id = queue.enqueue(session, "e", {}, retry_for=3600).id
        report = Worker(queue, sessions, {"e": come_back_tomorrow}).run_once()
        assert report.dead_lettered == 1
        row = item(sessions, item_id)
        assert (row.status, row.retry_count) == (RetryStatus.DEAD_LETTER, 0)
        assert RETRY_PAST_DEADLINE in str(history(sessions, item_id)[-1].error_message)

    def test_a_requeued_item_loses_its_spent_deadline(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        with sessions.begin() as session:
            item_id = queue.enqueue(session, "e", {}, max_retries=100, retry_for=120).id
        fail_until_final(sessions, queue, clock, item_id)
        assert item(sessions, item_id).last_error_code == DEADLINE_REACHED
        with sessions.begin() as session:
            assert queue.requeue(session, [item_id]) == [item_id]
        row = item(sessions, item_id)
        assert (row.status, row.retry_deadline) == (RetryStatus.PENDING, None)


class TestServerClock:
    """On the database clock, retry_for is counted from the row's created_at."""

    def test_retry_for_on_the_database_clock(
        self, sessions: sessionmaker[Session], server_clock_queue: RetryQueue
    ) -> None:
        with sessions.begin() as session:
            ids = server_clock_queue.enqueue_many(
                session, [NewItem("e", {}, retry_for=3600), NewItem("e", {})]
            )
        with_budget, without = (item(sessions, enqueued.id) for enqueued in ids)
        assert without.retry_deadline is None
        assert with_budget.retry_deadline is not None
        budget = with_budget.retry_deadline - with_budget.created_at
        assert timedelta(seconds=3599) < budget <= timedelta(seconds=3601)


class TestVisible:
    """show, stats and metrics show the deadline."""

    def test_show_stats_and_metrics(
        self,
        engine: Engine,
        sessions: sessionmaker[Session],
        queue: RetryQueue,
        clock: ManualClock,
    ) -> None:
        deadline = clock.now() + timedelta(hours=2)
        with sessions.begin() as session:
            item_id = queue.enqueue(session, "e", {}, deadline=deadline).id
            queue.enqueue(session, "e", {})
        with sessions() as session:
            assert queue.get(session, item_id).retry_deadline == deadline
            (group,) = queue.stats(session)
            assert (group.count, group.deadline_count) == (2, 1)
        registry = CollectorRegistry()
        registry.register(QueueCollector(engine, queue))
        assert (
            registry.get_sample_value("retryqueue_items_with_deadline", {"status": "pending"}) == 1
        )


class TestBadInput:
    """Bad deadlines are refused with one clear error; nothing is written."""

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"deadline": datetime(2030, 1, 1)}, "deadline"),  # naive
            ({"deadline": "2030-01-01T00:00:00Z"}, "deadline"),
            ({"deadline": -3600}, "deadline"),
            ({"retry_for": -1}, "retry_for"),
            ({"retry_for": 0}, "retry_for"),
            ({"retry_for": float("nan")}, "retry_for"),
            ({"retry_for": 11 * 365 * 86400}, "retry_for"),
            ({"retry_for": 8 * 86400}, "before the item expires"),  # default ttl: 7 days
            ({"retry_for": 3600, "ttl": 600}, "before the item expires"),
            ({"retry_for": 60, "delay": 120}, "first due time"),
            ({"retry_for": 60, "deadline": "x"}, "not both"),
        ],
    )
    def test_refused(
        self,
        sessions: sessionmaker[Session],
        queue: RetryQueue,
        fields: dict[str, Any],
        message: str,
    ) -> None:
        with sessions.begin() as session, pytest.raises(InvalidArgument, match=message):
            queue.enqueue_many(session, [NewItem("ok", {}), NewItem("e", {}, **fields)])
        with sessions() as session:
            assert session.scalar(select(func.count()).select_from(RetryItem)) == 0

    def test_a_deadline_in_the_past(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        with sessions.begin() as session, pytest.raises(InvalidArgument, match="in the past"):
            queue.enqueue(session, "e", {}, deadline=clock.now() - timedelta(seconds=1))
        with sessions() as session:
            assert session.scalar(select(func.count()).select_from(RetryItem)) == 0

    def test_a_route_with_a_bad_retry_for(self) -> None:
        with pytest.raises(InvalidArgument, match="retry_for"):
            Router().add("e", print, retry_for=-5)
