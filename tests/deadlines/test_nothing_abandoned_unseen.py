"""Items that expire unrun, and items that failed for good, show up in triage.

Before: an expired pending item stayed "pending" in stats, no alert named it, and cleanup
deleted it; failed items (NO_HANDLER, PermanentError) appeared in neither alerts nor the
dead-letter groups.
"""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import ManualClock, RetryQueue, RetryStatus
from retryqueue.metrics import QueueCollector
from retryqueue.models import RetryHistory, RetryItem
from retryqueue.policy import EXPIRED
from retryqueue.statements.reading import ALERT_DEAD_LETTER, ALERT_FAILED
from retryqueue.worker import PermanentError, Worker


def item(sessions: sessionmaker[Session], item_id: int) -> RetryItem:
    with sessions() as session:
        return session.get_one(RetryItem, item_id)


def scrape(engine: Engine, queue: RetryQueue, name: str, labels: dict[str, str]) -> float | None:
    registry = CollectorRegistry()
    registry.register(QueueCollector(engine, queue))
    return registry.get_sample_value(name, labels)


class TestExpiredUnrun:
    """An item that expires before it runs becomes a dead letter with code EXPIRED."""

    def test_the_workers_timer_dead_letters_it_and_triage_shows_it(
        self,
        engine: Engine,
        sessions: sessionmaker[Session],
        queue: RetryQueue,
        clock: ManualClock,
    ) -> None:
        with sessions.begin() as session:
            item_id = queue.enqueue(session, "e", {}, plugin_name="crm", ttl=60).id
        clock.advance(61)
        with sessions.begin() as session:  # the claim's stale-lock step sweeps expiry too
            assert queue.acquire(session, "w") == []
        row = item(sessions, item_id)
        assert (row.status, row.last_error_code) == (RetryStatus.DEAD_LETTER, EXPIRED)
        with sessions() as session:
            (entry,) = session.scalars(
                select(RetryHistory).where(RetryHistory.retry_queue_id == item_id)
            )
            assert (entry.status, entry.error_code) == ("expired", EXPIRED)
            assert [s.status for s in queue.stats(session)] == [RetryStatus.DEAD_LETTER]
            (alert,) = queue.alerts(session)
            assert (alert.item_id, alert.reason) == (item_id, ALERT_DEAD_LETTER)
            (group,) = queue.dead_letter_groups(session, "error_code")
            assert (group.key, group.count) == (EXPIRED, 1)
        labels = {"error_code": EXPIRED}
        assert scrape(engine, queue, "retryqueue_triage_items", labels) == 1
        with sessions.begin() as session:  # replay: back with a new expiry, and it runs
            assert queue.requeue(session, [item_id]) == [item_id]
        assert item(sessions, item_id).expires_at > clock.now()
        with sessions.begin() as session:
            (claimed,) = queue.acquire(session, "w")
            assert claimed.id == item_id

    def test_expire_is_bounded_and_leaves_live_items(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        with sessions.begin() as session:
            short = [queue.enqueue(session, "e", {}, ttl=60).id for _ in range(3)]
            live = queue.enqueue(session, "e", {}, ttl=3600).id
        clock.advance(61)
        with sessions.begin() as session:
            assert queue.expire(session, limit=2) == 2
        with sessions.begin() as session:
            assert queue.expire(session) == 1
            assert queue.expire(session) == 0
        assert {item(sessions, i).status for i in short} == {RetryStatus.DEAD_LETTER}
        assert item(sessions, live).status is RetryStatus.PENDING

    def test_cleanup_dead_letters_before_it_deletes(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        with sessions.begin() as session:
            item_id = queue.enqueue(session, "e", {}, ttl=60).id
        clock.advance(timedelta(days=30))
        with sessions.begin() as session:
            result = queue.cleanup(session, retention_days=7)
        assert (result.expired_count, result.deleted_count) == (1, 0)
        assert item(sessions, item_id).status is RetryStatus.DEAD_LETTER


class TestFailedInTriage:
    """failed items (no handler, permanent errors) appear in alerts, groups and metrics."""

    def test_no_handler_and_permanent_error(
        self, engine: Engine, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        def refuse(job: object) -> None:
            raise PermanentError("bad request", code="HTTP_400")

        with sessions.begin() as session:
            unrouted = queue.enqueue(session, "nobody.handles.this", {}).id
            refused = queue.enqueue(session, "e", {}).id
        Worker(queue, sessions, {"e": refuse}).run_once()
        assert item(sessions, unrouted).status is RetryStatus.FAILED
        assert item(sessions, refused).status is RetryStatus.FAILED
        with sessions() as session:
            alerts = {alert.item_id: alert.reason for alert in queue.alerts(session)}
            assert alerts == {unrouted: ALERT_FAILED, refused: ALERT_FAILED}
            groups = {g.key: g.count for g in queue.dead_letter_groups(session, "error_code")}
        assert groups == {"NO_HANDLER": 1, "HTTP_400": 1}
        assert scrape(engine, queue, "retryqueue_failed_items", {}) == 2
        assert scrape(engine, queue, "retryqueue_triage_items", {"error_code": "NO_HANDLER"}) == 1
