"""Enqueue on every backend: defaults, every column, idempotency, bad input writes nothing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import InvalidArgument, ManualClock, NewItem, RetryQueue, RetryStatus
from retryqueue.models import RetryItem


def count_items(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(RetryItem)) or 0)


class TestEnqueue:
    """A new item gets the reference schema's defaults and every column can be set."""

    def test_defaults_follow_the_reference_schema(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        with sessions.begin() as session:
            result = queue.enqueue(session, "cytube.event.chatMsg", {"message": "hi"})
        with sessions() as session:
            item = session.get_one(RetryItem, result.id)
            assert result.created
            assert item.event_id == result.event_id
            assert item.status is RetryStatus.PENDING
            assert (item.retry_count, item.max_retries, item.retry_delay_seconds) == (0, 3, 60)
            assert item.backoff_multiplier == 2.0
            assert item.priority == 5
            assert item.created_at == clock.now()
            assert item.next_retry_at == clock.now()
            assert item.expires_at == clock.now() + timedelta(days=7)
            assert item.event_metadata is None and item.tags is None
            assert item.locked_by is None and item.lease_token is None

    def test_every_column_is_settable(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        event_id = uuid.uuid4()
        run_at = clock.now() + timedelta(minutes=5)
        expires_at = clock.now() + timedelta(days=2)
        with sessions.begin() as session:
            result = queue.enqueue(
                session,
                "cytube.event.chatMsg",
                {"message": "test", "nested": {"list": [1, 2.5, None, True]}},
                channel_name="RIFFTRAX_MST3K",
                plugin_name="sql",
                event_metadata={"source": "bot"},
                max_retries=5,
                retry_delay_seconds=30,
                backoff_multiplier=1.5,
                priority=7,
                correlation_id="req-123",
                tags=["chat", "urgent"],
                event_id=event_id,
                run_at=run_at,
                expires_at=expires_at,
            )
        with sessions() as session:
            item = session.get_one(RetryItem, result.id)
            assert item.event_id == event_id
            assert (item.channel_name, item.plugin_name) == ("RIFFTRAX_MST3K", "sql")
            assert item.event_data == {"message": "test", "nested": {"list": [1, 2.5, None, True]}}
            assert item.event_metadata == {"source": "bot"}
            assert (item.max_retries, item.retry_delay_seconds) == (5, 30)
            assert item.backoff_multiplier == 1.5
            assert (item.priority, item.correlation_id) == (7, "req-123")
            assert item.tags == ["chat", "urgent"]
            assert item.next_retry_at == run_at
            assert item.expires_at == expires_at

    def test_delay_and_ttl_are_relative_to_now(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        with sessions.begin() as session:
            result = queue.enqueue(session, "e", {}, delay=timedelta(seconds=90), ttl=3600)
        with sessions() as session:
            item = session.get_one(RetryItem, result.id)
            assert item.next_retry_at == clock.now() + timedelta(seconds=90)
            assert item.expires_at == clock.now() + timedelta(hours=1)

    def test_datetimes_round_trip_exactly_in_utc(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        local = timezone(timedelta(hours=-5, minutes=-30))
        run_at = datetime(2026, 1, 5, 4, 31, 2, 123456, tzinfo=local)
        with sessions.begin() as session:
            result = queue.enqueue(session, "e", {}, run_at=run_at)
        with sessions() as session:
            stored = session.get_one(RetryItem, result.id).next_retry_at
        assert stored == run_at
        assert stored.tzinfo is UTC
        assert stored.microsecond == 123456

    def test_enqueue_is_idempotent_on_event_id(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        event_id = uuid.uuid4()
        with sessions.begin() as session:
            first = queue.enqueue(session, "e", {"n": 1}, event_id=event_id)
        with sessions.begin() as session:
            again = queue.enqueue(session, "e", {"n": 2}, event_id=str(event_id))
        assert first.created and not again.created
        assert again.id == first.id
        with sessions() as session:
            assert session.get_one(RetryItem, first.id).event_data == {"n": 1}
        assert count_items(sessions) == 1

    def test_enqueue_many_returns_results_in_input_order(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        known = uuid.uuid4()
        with sessions.begin() as session:
            queue.enqueue(session, "e", {}, event_id=known)
        items = [NewItem("bulk", {"i": i}, priority=1 + i % 10) for i in range(50)]
        items.insert(10, NewItem("bulk", {"dup": True}, event_id=known))
        with sessions.begin() as session:
            results = queue.enqueue_many(session, items)
        assert len(results) == 51
        assert [r.created for r in results].count(False) == 1
        assert not results[10].created
        with sessions() as session:
            for item, result in zip(items, results, strict=True):
                if result.created:
                    assert session.get_one(RetryItem, result.id).event_data == item.event_data
        assert count_items(sessions) == 51

    def test_a_repeated_event_id_in_one_batch_is_stored_once(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        same = uuid.uuid4()
        with sessions.begin() as session:
            first, second = queue.enqueue_many(
                session,
                [NewItem("e", {"n": 1}, event_id=same), NewItem("e", {"n": 2}, event_id=same)],
            )
        assert (first.created, second.created) == (True, False)
        assert first.id == second.id
        assert count_items(sessions) == 1

    def test_enqueue_many_of_nothing_is_nothing(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        with sessions.begin() as session:
            assert queue.enqueue_many(session, []) == []

    def test_sql_lookalike_strings_are_stored_verbatim(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        nasty = "'); DROP TABLE daz_retry_queue; --"
        with sessions.begin() as session:
            result = queue.enqueue(session, nasty, {nasty: nasty}, channel_name=nasty, tags=[nasty])
        with sessions() as session:
            item = session.get_one(RetryItem, result.id)
            assert (item.event_type, item.channel_name, item.tags) == (nasty, nasty, [nasty])
            assert item.event_data == {nasty: nasty}


BAD_CALLS: list[tuple[str, dict[str, object]]] = [
    ("priority", {"priority": 0}),
    ("priority", {"priority": 11}),
    ("priority", {"priority": "5"}),
    ("priority", {"priority": True}),
    ("max_retries", {"max_retries": -1}),
    ("retry_delay_seconds", {"retry_delay_seconds": -5}),
    ("backoff_multiplier", {"backoff_multiplier": 10}),
    ("backoff_multiplier", {"backoff_multiplier": 0.5}),
    ("backoff_multiplier", {"backoff_multiplier": 1.234}),
    ("backoff_multiplier", {"backoff_multiplier": float("nan")}),
    ("event_type", {"event_type": ""}),
    ("event_type", {"event_type": "x" * 256}),
    ("event_type", {"event_type": 42}),
    ("channel_name", {"channel_name": "c" * 256}),
    ("plugin_name", {"plugin_name": "   "}),
    ("correlation_id", {"correlation_id": "a\x00b"}),
    ("event_data", {"event_data": {"when": datetime(2026, 1, 1, tzinfo=UTC)}}),
    ("event_data", {"event_data": {"x": float("nan")}}),
    ("event_data", {"event_data": {"x": float("inf")}}),
    ("event_data", {"event_data": {1: "int key"}}),
    ("event_data", {"event_data": {"s": "\ud800"}}),
    ("event_data", {"event_data": {"s": "nul\x00"}}),
    ("event_data", {"event_data": None}),
    ("event_metadata", {"event_metadata": ["not", "a", "mapping"]}),
    ("run_at", {"run_at": datetime(2026, 1, 1)}),
    ("expires_at", {"expires_at": datetime(2026, 1, 1)}),
    ("delay", {"delay": -1}),
    ("delay", {"run_at": datetime(2026, 1, 1, tzinfo=UTC), "delay": 5}),
    ("ttl", {"ttl": 0}),
    ("tags", {"tags": "not-a-list"}),
    ("tags[1]", {"tags": ["ok", ""]}),
    ("event_id", {"event_id": "not-a-uuid"}),
    ("bogus", {"bogus": 1}),
]


class TestBadInput:
    """Bad input raises InvalidArgument naming the field, and nothing is written."""

    @pytest.mark.parametrize(("field", "overrides"), BAD_CALLS)
    def test_rejected_before_writing(
        self,
        sessions: sessionmaker[Session],
        queue: RetryQueue,
        field: str,
        overrides: dict[str, object],
    ) -> None:
        kwargs: dict[str, object] = {"event_type": "ok.event", "event_data": {"ok": True}}
        kwargs.update(overrides)
        with sessions.begin() as session, pytest.raises(InvalidArgument) as caught:
            queue.enqueue(session, **kwargs)  # type: ignore[arg-type]
        assert caught.value.field.startswith(field)
        assert field.split("[")[0] in str(caught.value)
        assert count_items(sessions) == 0

    @pytest.mark.parametrize(
        ("field", "accepted", "refused"),
        [
            ("priority", 1, True),  # True == 1 and hashes alike
            ("max_retries", 1, True),
            ("retry_delay_seconds", 0, False),
            ("backoff_multiplier", 2, [2]),  # unhashable
            ("max_retries", 3, 3.0),  # 3.0 == 3, but it is not an integer
        ],
    )
    def test_a_setting_refused_stays_refused_after_an_equal_one_passed(
        self,
        sessions: sessionmaker[Session],
        queue: RetryQueue,
        field: str,
        accepted: object,
        refused: object,
    ) -> None:
        """Validated settings are remembered by value and type: an equal value of another
        type (a bool for an int, a float for an int) is still checked and refused."""
        with sessions.begin() as session:
            queue.enqueue(session, "ok.event", {}, **{field: accepted})
        with sessions.begin() as session, pytest.raises(InvalidArgument) as caught:
            queue.enqueue(session, "ok.event", {}, **{field: refused})
        assert caught.value.field == field
        assert count_items(sessions) == 1

    def test_oversized_payload_is_rejected(self, sessions: sessionmaker[Session]) -> None:
        small = RetryQueue(max_payload_bytes=1000)
        with sessions.begin() as session, pytest.raises(InvalidArgument, match="larger than"):
            small.enqueue(session, "e", {"blob": "x" * 2000})
        assert count_items(sessions) == 0

    def test_deep_nesting_is_rejected(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        deep: object = "leaf"
        for _ in range(100):
            deep = [deep]
        with sessions.begin() as session, pytest.raises(InvalidArgument, match="nested"):
            queue.enqueue(session, "e", deep)
        assert count_items(sessions) == 0

    def test_one_bad_item_in_a_batch_writes_none(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        items = [NewItem("e", {"i": i}) for i in range(5)] + [NewItem("e", {}, priority=99)]
        with sessions.begin() as session, pytest.raises(InvalidArgument, match="priority"):
            queue.enqueue_many(session, items)
        assert count_items(sessions) == 0
