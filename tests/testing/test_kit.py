"""The testing kit itself: fixtures, clock, factories, drain and assertions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from retryqueue import ItemFilter, RetryQueue, RetryStatus
from retryqueue.errors import InvalidArgument
from retryqueue.models import RetryItem
from retryqueue.testing import ManualClock, assert_enqueued, assert_not_enqueued, drain
from retryqueue.testing.factories import RetryHistoryFactory, RetryItemFactory
from retryqueue.worker.routing import PermanentError, RetryLater


def always_fails(job: object) -> None:
    raise TimeoutError("downstream timeout")


@pytest.fixture(params=["sqlite", "postgresql"])
def rq_database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test here runs on in-memory SQLite and on PostgreSQL: overriding this one
    fixture is all it takes to promote a test to a real database."""
    if request.param == "sqlite":
        yield "sqlite://"
        return
    url: URL = request.getfixturevalue("kit_pg_url")
    yield url.render_as_string(hide_password=False)


class TestFixtures:
    """The plugin's fixtures give an isolated queue on a controllable clock."""

    def test_rows_do_not_survive_the_test_part_one(self, rq_session: Session) -> None:
        RetryItemFactory.create_batch(3)
        assert len(rq_session.scalars(select(RetryItem)).all()) == 3

    def test_rows_do_not_survive_the_test_part_two(self, rq_session: Session) -> None:
        assert rq_session.scalars(select(RetryItem)).all() == []

    def test_even_a_commit_is_undone(self, rq_session: Session, rq_queue: RetryQueue) -> None:
        rq_queue.enqueue(rq_session, "e", {})
        rq_session.commit()  # code under test may commit; the savepoint absorbs it
        assert len(rq_session.scalars(select(RetryItem)).all()) == 1

    def test_queue_follows_the_clock(
        self, rq_session: Session, rq_queue: RetryQueue, rq_clock: ManualClock
    ) -> None:
        item = rq_queue.enqueue(rq_session, "e", {}, delay=60)
        assert rq_queue.acquire(rq_session, "w") == []
        rq_clock.advance(timedelta(seconds=60))
        (claimed,) = rq_queue.acquire(rq_session, "w", lock_timeout=30)
        assert claimed.id == item.id
        rq_clock.advance(31)  # lock expiry follows the clock too
        assert rq_queue.stuck(rq_session, older_than=30)[0].id == item.id


class TestFactories:
    """A trait per status, times from the kit's clock."""

    @pytest.mark.parametrize(
        ("trait", "status"),
        [
            ({}, RetryStatus.PENDING),
            ({"processing": True}, RetryStatus.PROCESSING),
            ({"stale": True}, RetryStatus.PROCESSING),
            ({"completed": True}, RetryStatus.COMPLETED),
            ({"failed": True}, RetryStatus.FAILED),
            ({"dead_letter": True}, RetryStatus.DEAD_LETTER),
            ({"scheduled": True}, RetryStatus.PENDING),
        ],
    )
    def test_traits(
        self,
        rq_session: Session,
        rq_clock: ManualClock,
        trait: dict[str, bool],
        status: RetryStatus,
    ) -> None:
        item = RetryItemFactory(**trait)
        assert item.status is status
        assert item.created_at == rq_clock.now()
        if trait.get("processing"):
            assert item.locked_by and item.lease_token
        if trait.get("dead_letter"):
            assert item.retry_count == item.max_retries and item.last_error_code

    def test_stale_items_are_reclaimed(self, rq_session: Session, rq_queue: RetryQueue) -> None:
        stale = RetryItemFactory(stale=True, retry_delay_seconds=0)
        (claimed,) = rq_queue.acquire(rq_session, "rescuer", lock_timeout=300)
        assert claimed.id == stale.id and claimed.attempt == 2

    def test_history_factory(self, rq_session: Session, rq_queue: RetryQueue) -> None:
        item = RetryItemFactory(dead_letter=True)
        RetryHistoryFactory(item=item, dead_lettered=True)
        (entry,) = rq_queue.history(rq_session, item.id)
        assert (entry.status, entry.attempt_number, entry.event_id) == (
            "dead_lettered",
            4,
            item.event_id,
        )


class TestDrain:
    """drain() runs handlers inline with the worker's outcome rules."""

    def test_backoff_walks_to_dead_letter_without_sleeping(
        self, rq_session: Session, rq_queue: RetryQueue, rq_clock: ManualClock
    ) -> None:
        item = rq_queue.enqueue(rq_session, "payment.capture", {}, retry_delay_seconds=60)
        start = rq_clock.now()
        report = drain(rq_queue, rq_session, {"payment.*": always_fails}, advance_clock=True)
        assert report[item.id].status is RetryStatus.DEAD_LETTER
        assert report[item.id].attempts == 4
        assert report[item.id].error_code == "TimeoutError"
        assert rq_clock.now() - start == timedelta(seconds=60 + 120 + 240)
        statuses = [h.status for h in rq_queue.history(rq_session, item.id)]
        assert statuses == ["retry_scheduled"] * 3 + ["dead_lettered"]

    def test_outcome_rules(self, rq_session: Session, rq_queue: RetryQueue) -> None:
        def permanent(job: object) -> None:
            raise PermanentError("bad request", code="HTTP_400")

        def later(job: object) -> None:
            raise RetryLater(300)

        ids = {
            name: rq_queue.enqueue(rq_session, name, {}).id
            for name in ("ok", "permanent", "later", "unrouted")
        }
        report = drain(
            rq_queue, rq_session, {"ok": lambda job: None, "permanent": permanent, "later": later}
        )
        assert report[ids["ok"]].status is RetryStatus.COMPLETED
        assert (report[ids["permanent"]].status, report[ids["permanent"]].error_code) == (
            RetryStatus.FAILED,
            "HTTP_400",
        )
        assert report[ids["later"]].status is RetryStatus.PENDING  # due in 300 s
        assert report[ids["unrouted"]].error_code == "NO_HANDLER"

    def test_pause_key_is_not_counted(
        self, rq_session: Session, rq_queue: RetryQueue, rq_clock: ManualClock
    ) -> None:
        answers = [429.0]

        def saturated(job: object) -> None:
            if answers:
                raise RetryLater(after=answers.pop(), pause_key=True)

        item = rq_queue.enqueue(rq_session, "crm.sync", {}, plugin_name="crm", max_retries=0)
        start = rq_clock.now()
        report = drain(rq_queue, rq_session, {"crm.sync": saturated}, advance_clock=True)
        assert (report[item.id].status, report[item.id].attempts) == (RetryStatus.COMPLETED, 2)
        assert rq_clock.now() - start == timedelta(seconds=429)
        assert [h.status for h in rq_queue.history(rq_session, item.id)] == ["paused", "completed"]

    def test_advance_needs_a_manual_clock(self, rq_session: Session) -> None:
        with pytest.raises(TypeError, match="ManualClock"):
            drain(RetryQueue(), rq_session, {}, advance_clock=True)


class TestAssertions:
    """assert_enqueued explains what is in the queue when it fails."""

    def test_match_and_count(self, rq_session: Session, rq_queue: RetryQueue) -> None:
        rq_queue.enqueue(rq_session, "chat", {"user": "tom", "n": 1}, plugin_name="sql", priority=9)
        rq_queue.enqueue(rq_session, "chat", {"user": "joel"}, plugin_name="sql")
        assert len(assert_enqueued(rq_session, event_type="chat", plugin_name="sql", count=2)) == 2
        (tom,) = assert_enqueued(rq_session, event_data={"user": "tom"}, priority=9)
        assert tom.priority == 9
        assert_not_enqueued(rq_session, event_type="media")

    def test_failure_message_lists_the_queue(
        self, rq_session: Session, rq_queue: RetryQueue
    ) -> None:
        rq_queue.enqueue(rq_session, "chat", {}, plugin_name="sql", priority=4)
        with pytest.raises(AssertionError) as caught:
            assert_enqueued(rq_session, event_type="chat", priority=9)
        message = str(caught.value)
        assert "expected an item with event_type='chat', priority=9, found 0" in message
        assert "chat status=pending plugin=sql" in message and "priority=4" in message

    def test_empty_queue_is_said_plainly(self, rq_session: Session) -> None:
        with pytest.raises(AssertionError, match="the queue is empty"):
            assert_enqueued(rq_session, event_type="x")

    def test_unknown_attribute(self, rq_session: Session) -> None:
        with pytest.raises(TypeError, match="colour"):
            assert_enqueued(rq_session, colour="red")

    def test_unknown_attribute_suggests_the_real_one(self, rq_session: Session) -> None:
        with pytest.raises(TypeError, match=r"plugin \(did you mean plugin_name\?\)"):
            assert_enqueued(rq_session, plugin="slack")
        with pytest.raises(TypeError, match=r"evnt_type \(did you mean event_type\?\)"):
            assert_enqueued(rq_session, evnt_type="chat")

    def test_failure_message_shows_the_event_data(
        self, rq_session: Session, rq_queue: RetryQueue
    ) -> None:
        rq_queue.enqueue(rq_session, "payment", {"order": 43})
        with pytest.raises(AssertionError) as caught:
            assert_enqueued(rq_session, event_type="payment", event_data={"order": 42})
        assert "event_data={'order': 43}" in str(caught.value)

    def test_failure_points_at_the_callers_line(
        self, rq_session: Session, rq_queue: RetryQueue
    ) -> None:
        rq_queue.enqueue(rq_session, "x", {})
        with pytest.raises(AssertionError) as caught:
            assert_not_enqueued(rq_session, event_type="x")
        hidden = {entry.name for entry in caught.traceback if entry.ishidden(caught)}
        assert hidden == {"assert_enqueued", "assert_not_enqueued"}


class TestDrainReport:
    """A drain report's lookups say what was wrong with their argument."""

    def test_unknown_status_is_a_clear_error(
        self, rq_session: Session, rq_queue: RetryQueue
    ) -> None:
        rq_queue.enqueue(rq_session, "e", {})
        report = drain(rq_queue, rq_session, {"e": lambda job: None})
        assert len(report.by_status("completed")) == 1
        with pytest.raises(InvalidArgument, match="unknown status 'dead'; expected one of"):
            report.by_status("dead")


class TestSameTestOnPostgres:
    """The kit runs unchanged on PostgreSQL when a test asks for it."""

    def test_walkthrough(
        self, rq_session: Session, rq_queue: RetryQueue, rq_clock: ManualClock
    ) -> None:
        assert rq_session.get_bind().dialect.name in ("sqlite", "postgresql")
        item = rq_queue.enqueue(rq_session, "payment.capture", {"order": 1}, max_retries=1)
        report = drain(rq_queue, rq_session, {"payment.*": always_fails}, advance_clock=True)
        assert report[item.id].status is RetryStatus.DEAD_LETTER
        found = rq_queue.find(rq_session, ItemFilter(statuses=[RetryStatus.DEAD_LETTER]))
        assert [f.id for f in found] == [item.id]


class TestDrainSkipsExpiredItems:
    """An expired item neither stops the clock walk nor keeps it spinning."""

    def test_later_items_still_run(
        self, rq_session: Session, rq_queue: RetryQueue, rq_clock: ManualClock
    ) -> None:
        rq_queue.enqueue(rq_session, "stale", {}, ttl=10)
        later = rq_queue.enqueue(rq_session, "job", {}, delay=600, ttl=3600)
        rq_clock.advance(11)  # the first item expired unrun
        report = drain(rq_queue, rq_session, {"job": lambda job: None}, advance_clock=True)
        assert report[later.id].status is RetryStatus.COMPLETED
