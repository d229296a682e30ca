"""The hourly roll-up behind the dashboard's charts (``retryqueue.hourly``) on every backend."""

from __future__ import annotations

import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
import uvicorn
from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.testclient import TestClient

from retryqueue import InvalidArgument, ManualClock, RetryQueue
from retryqueue.hourly import outcomes_per_hour, roll_up
from retryqueue.models import HOURLY_MARKER, RetryHistory, RetryHourlyOutcome
from retryqueue.web import RollUpLoop, create_app, keep_rolled_up
from retryqueue.web.rollup import PER_VIEW
from tests.support.waiting import DEADLINE, wait_until

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


def markers(sessions: sessionmaker[Session]) -> list[datetime]:
    """The hours rolled up so far, oldest first."""
    with sessions() as session:
        hours = session.scalars(
            select(RetryHourlyOutcome.hour)
            .where(RetryHourlyOutcome.outcome == HOURLY_MARKER)
            .order_by(RetryHourlyOutcome.hour)
        ).all()
    return [hour.astimezone(UTC) for hour in hours]


def a_day_of_history(sessions: sessionmaker[Session]) -> None:
    """One completed attempt in each of the last 24 hours up to NOW, nothing rolled up."""
    item = an_item(sessions, "mail")
    for back in range(24):
        attempt(sessions, item, "completed", NOW - timedelta(hours=back))


def rolling_up_app(sessions: sessionmaker[Session]) -> Starlette:
    """A day of history, and a dashboard app that rolls up hourly in its lifespan."""
    a_day_of_history(sessions)
    queue = RetryQueue(clock=ManualClock(NOW))
    return create_app(sessions, queue=queue, roll_up_every=3600.0)


class TestDashboardReadsTheRollUp:
    """A page rolls up at most PER_VIEW hours, shows the rest as not counted yet, and still
    answers when it cannot roll up."""

    def test_first_view_of_a_day_rolls_up_one_hour_and_marks_the_rest(
        self, sessions: sessionmaker[Session]
    ) -> None:
        assert PER_VIEW == 1
        a_day_of_history(sessions)
        queue = RetryQueue(clock=ManualClock(NOW))
        with TestClient(create_app(sessions, queue=queue)) as client:
            first = client.get("/").text
            assert markers(sessions) == [at(9, 0)]  # the newest closed hour only
            assert first.count('<g class="not-counted"') == 22
            assert "22 hour(s) not counted yet" in first
            assert "2026-03-01 11:00:00: not counted yet" in first  # its tooltip
            assert "2026-03-02 09:00:00: 1 completed, 0 failed" in first
            assert "2026-03-02 10:00:00: 1 completed, 0 failed" in first  # live hour
            refreshed = client.get("/overview/live").text  # the self-refresh rolls up the next
            assert markers(sessions) == [at(8, 0), at(9, 0)]
            assert refreshed.count('<g class="not-counted"') == 21
            throughput = client.get("/throughput").text
            assert markers(sessions) == [at(7, 0), at(8, 0), at(9, 0)]
            assert throughput.count('<td colspan="2">not counted yet</td>') == 20
            assert "20 closed hour(s) not counted yet" in throughput
            assert '2026-03-02 07:00:00</td><td class="num">1</td>' in throughput
            for _ in range(20):
                client.get("/overview/live")
            full = client.get("/").text
        assert len(markers(sessions)) == 23
        assert "not counted yet" not in full
        assert full.count(": 1 completed, 0 failed") == 24

    def test_a_failed_roll_up_leaves_the_hour_not_counted(
        self, sessions: sessionmaker[Session]
    ) -> None:
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
        assert markers(sessions) == []
        assert '2026-03-02 09:00:00</td><td colspan="2">not counted yet' in throughput.text
        assert "1000" not in throughput.text
        assert "2026-03-02 09:00:00: not counted yet" in overview.text


class TestBackgroundRollUp:
    """``create_app(roll_up_every=...)``: the lifespan keeps every closed hour rolled up."""

    def test_fills_the_table_and_stops_with_the_server(
        self, sessions: sessionmaker[Session]
    ) -> None:
        a_day_of_history(sessions)
        queue = RetryQueue(clock=ManualClock(NOW))
        app = create_app(sessions, queue=queue, roll_up_every=3600.0, roll_up_per_view=0)
        with TestClient(app) as client:
            loop = app.state.roll_up
            assert loop.running
            wait_until(lambda: len(markers(sessions)) == 23, what="the background roll-up")
            wait_until(lambda: loop.rounds == 1, what="the end of the first round")
            page = client.get("/").text
        assert "not counted yet" not in page and page.count(": 1 completed, 0 failed") == 24
        assert not loop.running and loop.hours_rolled_up == 23 and loop.rounds == 1

    def test_with_a_background_roll_up_no_page_rolls_up(
        self, sessions: sessionmaker[Session]
    ) -> None:
        """A request never pays for an hour when the background does the rolling up."""
        app = rolling_up_app(sessions)
        client = TestClient(app)  # no `with`: the lifespan (the background) does not run
        page = client.get("/").text
        assert markers(sessions) == []
        assert "23 hour(s) not counted yet" in page

    def test_a_uvicorn_server_rolls_up_until_it_stops(
        self, sessions: sessionmaker[Session]
    ) -> None:
        """What ``retryqueue dashboard`` serves: uvicorn runs the lifespan."""
        app = rolling_up_app(sessions)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning")
        )
        thread = threading.Thread(target=server.run, name="dashboard-server", daemon=True)
        thread.start()
        try:
            wait_until(lambda: server.started, what="the server")
            wait_until(lambda: len(markers(sessions)) == 23, what="the background roll-up")
            loop = app.state.roll_up
            assert loop.running
        finally:
            server.should_exit = True
            thread.join(DEADLINE)
        assert not thread.is_alive()
        assert not loop.running and loop.hours_rolled_up == 23

    def test_a_host_application_runs_it_in_its_lifespan(
        self, sessions: sessionmaker[Session]
    ) -> None:
        a_day_of_history(sessions)
        queue = RetryQueue(clock=ManualClock(NOW))
        seen: list[RollUpLoop] = []

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with keep_rolled_up(sessions, queue=queue) as loop:
                seen.append(loop)
                yield

        host = Starlette(lifespan=lifespan)
        host.mount("/ops/queue", create_app(sessions, queue=queue, roll_up_per_view=0))
        with TestClient(host) as client:
            wait_until(lambda: seen and seen[0].rounds >= 1, what="the first round")
            page = client.get("/ops/queue/").text
        assert len(markers(sessions)) == 23 and "not counted yet" not in page
        assert not seen[0].running

    def test_bad_interval_is_refused(self, sessions: sessionmaker[Session]) -> None:
        with pytest.raises(InvalidArgument, match="roll_up_every"):
            create_app(sessions, roll_up_every=0)
