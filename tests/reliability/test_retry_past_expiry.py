"""A failing item whose next retry would fall after its expiry ends visibly in dead_letter.

Before, the retry was scheduled anyway, the item expired while waiting, and cleanup
archived it as "expired before it could run": it never reached dead_letter.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import ManualClock, RetryQueue, RetryStatus
from retryqueue.models import RetryHistory, RetryItem
from retryqueue.policy import RETRY_PAST_EXPIRY
from retryqueue.worker import RetryLater, Worker

pytestmark = pytest.mark.reliability


def history(sessions: sessionmaker[Session], item_id: int) -> list[RetryHistory]:
    with sessions() as session:
        return list(
            session.scalars(
                select(RetryHistory)
                .where(RetryHistory.retry_queue_id == item_id)
                .order_by(RetryHistory.id)
            )
        )


def status(sessions: sessionmaker[Session], item_id: int) -> RetryItem:
    with sessions() as session:
        return session.get_one(RetryItem, item_id)


class TestRetryPastExpiry:
    """The retry that cannot happen before expiry is a dead letter with that reason."""

    def test_backoff_past_expiry_dead_letters_with_the_reason(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        with sessions.begin() as session:
            item_id = queue.enqueue(
                session, "e", {}, max_retries=5, retry_delay_seconds=3600, ttl=3 * 3600
            ).id
        with sessions.begin() as session:  # retry due in 1 h, expiry in 3 h: scheduled
            (claimed,) = queue.acquire(session, "w")
            assert queue.fail(session, claimed, error_message="timeout", error_code="T")
        assert status(sessions, item_id).status is RetryStatus.PENDING
        clock.advance(3600)
        with sessions.begin() as session:  # next retry due in 2 h = at expiry: refused
            (claimed,) = queue.acquire(session, "w")
            assert queue.fail(session, claimed, error_message="timeout", error_code="T")
        row = status(sessions, item_id)
        assert row.status is RetryStatus.DEAD_LETTER
        assert row.retry_count == 1 and row.last_error_code == "T"
        last = history(sessions, item_id)[-1]
        assert (last.status, last.attempt_number) == ("dead_lettered", 2)
        assert RETRY_PAST_EXPIRY in str(last.error_message)
        assert "timeout" in str(last.error_message)  # the handler's error is kept
        assert "max" not in str(last.error_message)  # not the max-retries reason
        clock.advance(timedelta(days=1))  # past expiry: cleanup leaves the dead letter alone
        with sessions.begin() as session:
            assert queue.cleanup(session, retention_days=7).archived_count == 0
        assert status(sessions, item_id).status is RetryStatus.DEAD_LETTER

    def test_retry_after_past_expiry_on_the_server_clock(
        self, sessions: sessionmaker[Session], server_clock_queue: RetryQueue
    ) -> None:
        queue = server_clock_queue
        with sessions.begin() as session:
            item_id = queue.enqueue(session, "e", {}, ttl=3600).id
        with sessions.begin() as session:
            (claimed,) = queue.acquire(session, "w")
            assert queue.fail(session, claimed, error_message="429", retry_after=7200)
        assert status(sessions, item_id).status is RetryStatus.DEAD_LETTER
        (only,) = history(sessions, item_id)
        assert only.status == "dead_lettered" and RETRY_PAST_EXPIRY in str(only.error_message)

    def test_lock_expiry_past_expiry_dead_letters(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        with sessions.begin() as session:
            item_id = queue.enqueue(session, "e", {}, retry_delay_seconds=600, ttl=900).id
        with sessions.begin() as session:
            queue.acquire(session, "crashed", lock_timeout=300)
        clock.advance(301)  # reclaimed at 301 s; the retry would be due at 901 s > 900 s
        with sessions.begin() as session:
            assert queue.acquire(session, "w", lock_timeout=300) == []
        assert status(sessions, item_id).status is RetryStatus.DEAD_LETTER
        (only,) = history(sessions, item_id)
        assert only.status == "lock_expired" and RETRY_PAST_EXPIRY in str(only.error_message)

    def test_the_worker_reports_a_dead_letter(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        def come_back_later(job: object) -> None:
            raise RetryLater(7200)

        with sessions.begin() as session:
            item_id = queue.enqueue(session, "e", {}, ttl=3600).id
        report = Worker(queue, sessions, {"e": come_back_later}).run_once()
        assert (report.dead_lettered, report.retried) == (1, 0)
        assert status(sessions, item_id).status is RetryStatus.DEAD_LETTER
