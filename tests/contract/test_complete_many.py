"""complete_many records one completion per item, however often the item is passed."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from retryqueue import ManualClock, RetryQueue, RetryStatus


class TestCompleteManyDeduplicates:
    """The same item twice, or an old lease with the current one: one history row."""

    def test_the_same_item_twice(self, sessions: sessionmaker[Session], queue: RetryQueue) -> None:
        with sessions.begin() as session:
            item_id = queue.enqueue(session, "a", {}).id
        with sessions.begin() as session:
            (item,) = queue.acquire(session, "w")
        with sessions.begin() as session:
            assert queue.complete_many(session, [item, item], durations_ms=[5, 7]) == {item_id}
        with sessions() as session:
            history = queue.history(session, item_id)
        assert [(h.status, h.attempt_number) for h in history] == [("completed", 1)]

    def test_an_old_and_the_current_lease(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        with sessions.begin() as session:
            item_id = queue.enqueue(session, "a", {}, retry_delay_seconds=0).id
        with sessions.begin() as session:
            (old,) = queue.acquire(session, "w", lock_timeout=10)
        clock.advance(60)  # the lease expired: the same worker id reclaims the item
        with sessions.begin() as session:
            queue.acquire(session, "w", lock_timeout=10)  # reclaims: back to pending
        clock.advance(60)
        with sessions.begin() as session:
            (current,) = queue.acquire(session, "w", lock_timeout=10)
        assert current.lease_token != old.lease_token
        with sessions.begin() as session:
            assert queue.complete_many(session, [old, current]) == {item_id}
        with sessions() as session:
            assert queue.get(session, item_id).status is RetryStatus.COMPLETED
            history = [h.status for h in queue.history(session, item_id)]
        assert history.count("completed") == 1
