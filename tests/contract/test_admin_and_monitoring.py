"""Requeue, purge, cleanup and the monitoring queries on every backend."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import (
    ClaimedItem,
    InvalidArgument,
    ItemFilter,
    ItemNotFound,
    ManualClock,
    NewItem,
    RetryQueue,
    RetryStatus,
)
from retryqueue.models import RetryHistory, RetryItem
from tests.contract.test_lifecycle import acquire, enqueue, history, item


def finish(
    sessions: sessionmaker[Session],
    queue: RetryQueue,
    outcome: str,
    *,
    error_code: str = "BOOM",
    **fields: object,
) -> int:
    """Enqueue one item and drive it to ``outcome`` (completed, failed, dead_letter)."""
    item_id = enqueue(sessions, queue, max_retries=0, **fields)
    claimed = claim_only(sessions, queue, item_id)
    with sessions.begin() as session:
        if outcome == "completed":
            queue.complete(session, claimed)
        else:
            queue.fail(
                session,
                claimed,
                error_message=f"{error_code} happened",
                error_code=error_code,
                retryable=outcome != "failed",
            )
    return item_id


def claim_only(
    sessions: sessionmaker[Session], queue: RetryQueue, item_id: int, worker: str = "finisher"
) -> ClaimedItem:
    """Acquire exactly one given item, handing anything else acquired with it back."""
    with sessions.begin() as session:
        claimed = queue.acquire(session, worker, batch_size=1000)
        others = [c.id for c in claimed if c.id != item_id]
        if others:
            queue.release(session, worker, others, lease_token=claimed[0].lease_token)
    (mine,) = [c for c in claimed if c.id == item_id]
    return mine


def count(sessions: sessionmaker[Session], model: type[RetryItem] | type[RetryHistory]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


class TestRequeue:
    """Dead letters and permanent failures go back to pending on request, with history."""

    def test_requeue_dead_letter_and_failed(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        dead = finish(sessions, queue, "dead_letter")
        failed = finish(sessions, queue, "failed")
        done = finish(sessions, queue, "completed")
        clock.advance(3600)
        with sessions.begin() as session:
            moved = queue.requeue(session, ItemFilter(), requested_by="ops")
        assert moved == sorted([dead, failed])
        for item_id in moved:
            row = item(sessions, item_id)
            assert (row.status, row.retry_count, row.next_retry_at) == (
                RetryStatus.PENDING,
                0,
                clock.now(),
            )
            assert row.expires_at == clock.now() + timedelta(days=7)
            assert history(sessions, item_id)[-1].status == "requeued"
            assert history(sessions, item_id)[-1].worker_id == "ops"
        assert item(sessions, done).status is RetryStatus.COMPLETED
        assert {c.id for c in acquire(sessions, queue)} == {dead, failed}

    def test_replay_completed_only_on_request(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        done = finish(sessions, queue, "completed")
        with sessions.begin() as session:
            assert queue.requeue(session, [done]) == []
            replayed = queue.requeue(session, ItemFilter(statuses=[RetryStatus.COMPLETED]))
        assert replayed == [done]
        assert item(sessions, done).completed_at is None

    def test_filters_narrow_the_selection(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        a = finish(sessions, queue, "dead_letter", plugin_name="sql", error_code="TIMEOUT")
        finish(sessions, queue, "dead_letter", plugin_name="sql", error_code="AUTH")
        finish(sessions, queue, "dead_letter", plugin_name="http", error_code="TIMEOUT")
        with sessions.begin() as session:
            chosen = ItemFilter(plugin_name="sql", error_code="TIMEOUT")
            assert [s.id for s in queue.find(session, chosen)] == [a]
            assert queue.requeue(session, chosen, reset_retries=False) == [a]

    def test_processing_items_cannot_be_requeued(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        with sessions.begin() as session, pytest.raises(InvalidArgument, match="statuses"):
            queue.requeue(session, ItemFilter(statuses=[RetryStatus.PROCESSING]))
        with sessions.begin() as session, pytest.raises(InvalidArgument, match="unknown status"):
            queue.requeue(session, ItemFilter(statuses=["zombie"]))  # type: ignore[list-item]


class TestPurge:
    """Purge deletes what a filter selects, never an item in flight."""

    def test_purge_keeps_processing_items_and_history(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        dead = finish(sessions, queue, "dead_letter")
        busy = enqueue(sessions, queue)
        acquire(sessions, queue)
        with sessions.begin() as session:
            gone = queue.purge(session, [dead, busy])
        assert gone == [dead]
        with sessions() as session:
            assert session.get(RetryItem, dead) is None
        assert item(sessions, busy).status is RetryStatus.PROCESSING
        assert len(history(sessions, dead)) == 1


class TestCleanup:
    """Cleanup removes old finished items, archives expired ones, trims history."""

    def test_retention_expiry_and_history(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        old_done = finish(sessions, queue, "completed")
        old_dead = finish(sessions, queue, "dead_letter")
        old_failed = finish(sessions, queue, "failed")
        waiting = enqueue(sessions, queue, delay=timedelta(days=19), ttl=timedelta(days=20))
        clock.advance(timedelta(days=8))
        recent_done = finish(sessions, queue, "completed")
        live = enqueue(sessions, queue, delay=timedelta(days=1), ttl=timedelta(days=30))
        with sessions.begin() as session:
            result = queue.cleanup(session, retention_days=7, batch_size=2)
        assert result.deleted_count == 3
        assert result.archived_count == 0
        with sessions() as session:
            for gone in (old_done, old_dead, old_failed):
                assert session.get(RetryItem, gone) is None
            for kept in (recent_done, live, waiting):
                assert session.get(RetryItem, kept) is not None
        clock.advance(timedelta(days=13))  # waiting expires (20 d); history ages past 14 d
        with sessions.begin() as session:
            result = queue.cleanup(session, retention_days=7, batch_size=2)
        assert (result.expired_count, result.archived_count) == (1, 0)
        assert result.history_deleted_count == 3  # the attempts of the items finished on day 0
        assert [h.status for h in history(sessions, waiting)] == ["expired"]
        with sessions() as session:  # expired unrun: a dead letter, not deleted unseen
            row = session.get_one(RetryItem, waiting)
            assert (row.status, row.last_error_code) == (RetryStatus.DEAD_LETTER, "EXPIRED")
        clock.advance(timedelta(days=8))  # a dead letter for the full retention, then deleted
        with sessions.begin() as session:
            queue.cleanup(session, retention_days=7, batch_size=2)
        with sessions() as session:
            assert session.get(RetryItem, waiting) is None

    def test_ids_of_cleaned_up_items_are_never_reused(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        old = finish(sessions, queue, "completed")
        clock.advance(timedelta(days=8))
        with sessions.begin() as session:
            assert queue.cleanup(session, retention_days=7).deleted_count == 1
        new = enqueue(sessions, queue)
        assert new > old  # else the old item's history rows would describe the new one
        assert history(sessions, new) == []

    def test_iter_cleanup_yields_bounded_batches(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        for _ in range(5):
            finish(sessions, queue, "completed")
        clock.advance(timedelta(days=8))
        with sessions.begin() as session:
            parts = list(queue.iter_cleanup(session, retention_days=7, batch_size=2))
        deleted = [p.deleted_count for p in parts if p.deleted_count]
        assert deleted == [2, 2, 1]
        assert count(sessions, RetryItem) == 0

    def test_bad_retention_is_refused(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        with sessions.begin() as session, pytest.raises(InvalidArgument, match="retention_days"):
            queue.cleanup(session, retention_days=-1)


class TestMonitoring:
    """Stats, alerts, stuck items, throughput and success rate as ORM queries."""

    def test_stats_group_by_status_type_and_plugin(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        first = enqueue(sessions, queue, event_type="chat", plugin_name="sql")
        clock.advance(60)
        enqueue(sessions, queue, event_type="chat", plugin_name="sql")
        acquire(sessions, queue, batch_size=1)
        finish(sessions, queue, "dead_letter", event_type="media")
        with sessions() as session:
            stats = {(s.status, s.event_type, s.plugin_name): s for s in queue.stats(session)}
        processing = stats[(RetryStatus.PROCESSING, "chat", "sql")]
        assert (processing.count, processing.locked_count) == (1, 1)
        pending = stats[(RetryStatus.PENDING, "chat", "sql")]
        assert pending.count == 1 and pending.locked_count == 0
        dead = stats[(RetryStatus.DEAD_LETTER, "media", None)]
        assert (dead.count, dead.max_retry_count, dead.avg_retry_count) == (1, 0, 0.0)
        assert item(sessions, first).status is RetryStatus.PROCESSING

    def test_alerts_name_their_reason(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        dead = finish(sessions, queue, "dead_letter")
        old = enqueue(sessions, queue, event_type="old")
        near = enqueue(sessions, queue, event_type="near", max_retries=2, retry_delay_seconds=0)
        for _ in range(2):
            claimed = claim_only(sessions, queue, near)
            with sessions.begin() as session:
                queue.fail(session, claimed, error_message="again")
        clock.advance(timedelta(hours=2))
        stale = enqueue(sessions, queue, event_type="stale")
        claimed_all = acquire(sessions, queue, "slow", batch_size=5, lock_timeout=10**6)
        assert stale in {c.id for c in claimed_all}
        clock.advance(timedelta(hours=23))
        with sessions.begin() as session:
            queue.release(
                session,
                "slow",
                [c.id for c in claimed_all if c.id != stale],
                lease_token=claimed_all[0].lease_token,
            )
        with sessions() as session:
            reasons = {a.item_id: a.reason for a in queue.alerts(session)}
        assert reasons[dead] == "dead letter: manual intervention required"
        assert reasons[stale] == "stale lock"
        assert reasons[near] == "approaching retry limit"
        assert reasons[old] == "old pending item"

    def test_stuck_items(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        stuck_id = enqueue(sessions, queue)
        acquire(sessions, queue, lock_timeout=10**6)
        clock.advance(timedelta(minutes=30))
        with sessions() as session:
            assert queue.stuck(session, timedelta(hours=1)) == []
        clock.advance(timedelta(minutes=31))
        with sessions() as session:
            (snapshot,) = queue.stuck(session, timedelta(hours=1))
        assert snapshot.id == stuck_id and snapshot.locked_by == "w1"

    def test_items_per_hour_and_success_rate(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        clock.set(clock.now().replace(minute=10))
        finish(sessions, queue, "completed", event_type="chat")
        finish(sessions, queue, "dead_letter", event_type="chat")
        clock.advance(timedelta(hours=1))
        finish(sessions, queue, "completed", event_type="chat")
        finish(sessions, queue, "completed", event_type="media")
        with sessions() as session:
            hours = queue.items_per_hour(session, hours=24)
            rates = {r.event_type: r for r in queue.success_rate_by_event_type(session)}
        assert [(h.hour.minute, h.count) for h in hours] == [(0, 2), (0, 2)]
        assert hours[1].hour - hours[0].hour == timedelta(hours=1)
        assert hours[0].hour.tzinfo is not None
        assert (rates["chat"].total, rates["chat"].completed) == (3, 2)
        assert rates["chat"].success_rate == pytest.approx(2 / 3)
        assert rates["media"].success_rate == 1.0

    def test_dead_letter_groups(self, sessions: sessionmaker[Session], queue: RetryQueue) -> None:
        for code in ("TIMEOUT", "TIMEOUT", "AUTH"):
            finish(sessions, queue, "dead_letter", error_code=code)
        with sessions() as session:
            groups = queue.dead_letter_groups(session, "error_code")
            with pytest.raises(InvalidArgument, match="group_by"):
                queue.dead_letter_groups(session, "colour")
        assert [(g.key, g.count) for g in groups] == [("TIMEOUT", 2), ("AUTH", 1)]
        assert groups[0].sample_error == "TIMEOUT happened"

    def test_get_and_history(self, sessions: sessionmaker[Session], queue: RetryQueue) -> None:
        item_id = finish(sessions, queue, "completed")
        with sessions() as session:
            assert queue.get(session, item_id).status is RetryStatus.COMPLETED
            assert [h.status for h in queue.history(session, item_id)] == ["completed"]
            with pytest.raises(ItemNotFound):
                queue.get(session, 10**9)

    def test_bulk_enqueue_feeds_monitoring(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        with sessions.begin() as session:
            queue.enqueue_many(session, [NewItem("bulk", {"i": i}) for i in range(20)])
        with sessions() as session:
            (stat,) = queue.stats(session)
        assert (stat.status, stat.count) == (RetryStatus.PENDING, 20)
