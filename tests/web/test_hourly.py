"""The hourly roll-up behind the dashboard's charts (``retryqueue.hourly``) on every backend."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient

from retryqueue import ManualClock, RetryQueue
from retryqueue.hourly import outcomes_per_hour, roll_up
from retryqueue.models import HOURLY_MARKER, RetryHistory, RetryHourlyOutcome
from retryqueue.web import create_app

NOW = datetime(2026, 3, 2, 10, 20, tzinfo=UTC)  # hour 10 is current, 9 has closed
GONE = 987_654_321  # the id of an item no longer in the queue


def at(hour: int, minute: int) -> datetime:
    """A moment of the day of NOW."""
    return NOW.replace(hour=hour, minute=minute)


def attempt(sessions: sessionmaker[Session], item_id: int, status: str, when: datetime) -> None:
    """One history row, written as a worker would have."""
    with sessions.begin() as session:
        session.execute(
            insert(RetryHistory).values(
                retry_queue_id=item_id,
                event_id=uuid.uuid4(),
                attempt_number=1,
                status=status,
                attempted_at=when,
            )
        )


def an_item(sessions: sessionmaker[Session], plugin: str) -> int:
    """A queue item of ``plugin``: its id."""
    with sessions.begin() as session:
        return RetryQueue().enqueue(session, "order.created", {}, plugin_name=plugin).id


def table(rows: list[object]) -> set[tuple[int, str | None, int, int]]:
    """(hour, plugin, completed, failed) of OutcomeCount rows."""
    return {(r.hour.hour, r.plugin_name, r.completed, r.failed) for r in rows}  # type: ignore[attr-defined]


class TestRollUp:
    """Closed hours are counted once, stored, and read back; the current hour stays live."""

    def test_closed_hours_counted_once_and_read_back(self, sessions: sessionmaker[Session]) -> None:
        billing = an_item(sessions, "billing")
        attempt(sessions, billing, "completed", at(8, 10))
        attempt(sessions, billing, "completed", at(8, 50))
        attempt(sessions, billing, "dead_lettered", at(9, 59))
        attempt(sessions, GONE, "completed", at(10, 5))
        expected = {(8, "billing", 2, 0), (9, "billing", 0, 1), (10, None, 1, 0)}
        with sessions() as session:
            assert table(outcomes_per_hour(session, NOW, 24, per_plugin=True)) == expected
        with sessions.begin() as session:
            assert roll_up(session, NOW, 24) == 23  # every closed hour of the window
        with sessions.begin() as session:
            assert roll_up(session, NOW, 24) == 0  # once only
        with sessions() as session:
            assert table(outcomes_per_hour(session, NOW, 24, per_plugin=True)) == expected
        # From now on hour 8 is read from the roll-up: an attempt recorded there late is not
        # counted; the current hour is still counted live.
        attempt(sessions, billing, "completed", at(8, 30))
        attempt(sessions, billing, "failed", at(10, 10))
        with sessions() as session:
            totals = table(outcomes_per_hour(session, NOW, 24))
        assert totals == {(8, None, 2, 0), (9, None, 0, 1), (10, None, 1, 1)}

    def test_an_hour_is_live_until_its_grace_has_passed(
        self, sessions: sessionmaker[Session]
    ) -> None:
        item = an_item(sessions, "mail")
        attempt(sessions, item, "completed", at(8, 30))
        early = at(10, 3)  # hour 9 ended 3 minutes ago: not closed yet
        with sessions.begin() as session:
            assert roll_up(session, early, 3) == 1  # hour 8 only
        attempt(sessions, item, "completed", at(9, 58))  # a late write into hour 9
        with sessions() as session:
            assert table(outcomes_per_hour(session, early, 3)) == {(8, None, 1, 0), (9, None, 1, 0)}

    def test_cleanup_prunes_rolled_up_hours_past_twice_the_retention(
        self, sessions: sessionmaker[Session]
    ) -> None:
        attempt(sessions, an_item(sessions, "mail"), "completed", at(8, 30))
        with sessions.begin() as session:
            roll_up(session, NOW, 24)
            rows = session.scalar(select(func.count()).select_from(RetryHourlyOutcome))
        assert rows == 24  # 23 markers and hour 8's one row
        later = RetryQueue(clock=ManualClock(NOW + timedelta(days=2, minutes=-80)))
        with sessions.begin() as session:  # twice a 1-day retention: hours before 09:00
            assert later.cleanup(session, retention_days=1).hourly_rows_deleted == 23
            left = session.scalars(select(RetryHourlyOutcome.hour)).all()
        assert [hour.astimezone(UTC) for hour in left] == [at(9, 0)]


class TestDashboardReadsTheRollUp:
    """The pages roll hours up as they go, and still answer when they cannot."""

    def test_pages_roll_up_then_count_the_same(self, sessions: sessionmaker[Session]) -> None:
        attempt(sessions, an_item(sessions, "mail"), "completed", at(9, 30))
        queue = RetryQueue(clock=ManualClock(NOW))
        with TestClient(create_app(sessions, queue=queue)) as client:
            page = client.get("/throughput").text
        assert '2026-03-02 09:00:00</td><td class="num">1</td>' in page
        with sessions() as session:
            marked = session.scalars(
                select(RetryHourlyOutcome.hour).where(RetryHourlyOutcome.outcome == HOURLY_MARKER)
            ).all()
        assert len(marked) == 23

    def test_a_failed_roll_up_leaves_the_hours_live(self, sessions: sessionmaker[Session]) -> None:
        attempt(sessions, GONE, "completed", at(9, 30))
        with sessions.begin() as session:  # a stray row, no marker: the roll-up's INSERT clashes
            session.execute(
                insert(RetryHourlyOutcome).values(
                    hour=at(9, 0), plugin_name="", outcome="completed", attempts=1000
                )
            )
        queue = RetryQueue(clock=ManualClock(NOW))
        with TestClient(create_app(sessions, queue=queue)) as client:
            throughput = client.get("/throughput")
            overview = client.get("/")
        assert throughput.status_code == 200 and overview.status_code == 200
        assert '2026-03-02 09:00:00</td><td class="num">1</td>' in throughput.text
        assert "1000" not in throughput.text
