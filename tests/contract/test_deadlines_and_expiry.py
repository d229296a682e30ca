"""Retry deadlines and the expiry sweep through every front (sync and each async driver)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from retryqueue import ManualClock, RetryStatus
from retryqueue.policy import DEADLINE_REACHED, EXPIRED


class TestDeadlineAndExpiry:
    """A spent deadline dead-letters; an expired unrun item becomes a dead letter."""

    def test_deadline_then_expiry(self, sessions: Any, queue: Any, clock: ManualClock) -> None:
        with sessions.begin() as session:
            budget = queue.enqueue(session, "e", {}, max_retries=50, retry_for=100).id
            unrun = queue.enqueue(session, "e", {}, delay=3600, ttl=7200).id
        with sessions.begin() as session:  # due 60 s later: within the budget
            (claimed,) = queue.acquire(session, "w")
            assert queue.fail(session, claimed, error_message="down")
        clock.advance(60)
        with sessions.begin() as session:  # backoff 120 s > 40 s left: moved up to 100 s
            (claimed,) = queue.acquire(session, "w")
            assert queue.fail(session, claimed, error_message="down")
            assert queue.get(session, budget).next_retry_at == clock.now() + timedelta(seconds=40)
        clock.advance(40)
        with sessions.begin() as session:
            (claimed,) = queue.acquire(session, "w")
            assert queue.fail(session, claimed, error_message="down")
        clock.advance(7200)
        with sessions.begin() as session:
            assert queue.expire(session) == 1
        with sessions() as session:
            spent, expired = queue.get(session, budget), queue.get(session, unrun)
        assert (spent.status, spent.last_error_code) == (RetryStatus.DEAD_LETTER, DEADLINE_REACHED)
        assert (expired.status, expired.last_error_code) == (RetryStatus.DEAD_LETTER, EXPIRED)
