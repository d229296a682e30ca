"""Rate limits and pauses on the claim: a limited key's items are claimed no faster than
its bucket allows, paused keys' items not at all; held-back items spend nothing."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import InvalidArgument, ManualClock, NewItem, RetryQueue, RetryStatus
from retryqueue.models import RetryHistory, RetryLimit
from retryqueue.statements import claim as claim_statement


def seed(
    queue: RetryQueue,
    sessions: sessionmaker[Session],
    plugin: str | None,
    n: int,
    event: str = "send",
) -> list[int]:
    with sessions.begin() as session:
        made = queue.enqueue_many(
            session, [NewItem(event, {"n": i}, plugin_name=plugin) for i in range(n)]
        )
    return [item.id for item in made]


def claim(
    queue: RetryQueue, sessions: sessionmaker[Session], n: int = 100, **keys: Any
) -> list[Any]:
    with sessions.begin() as session:
        return queue.acquire(session, "w", n, reclaim_stale=False, **keys)


def keys_of(items: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        key = f"{item.plugin_name}:{item.event_type}"
        counts[key] = counts.get(key, 0) + 1
    return counts


class TestRateLimit:
    """A key's items are claimed no faster than its tokens; other keys are untouched."""

    def test_burst_then_rate(
        self, queue: RetryQueue, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        limited = seed(queue, sessions, "pay", 10)
        other = seed(queue, sessions, "mail", 5)
        free = seed(queue, sessions, None, 2)
        with sessions.begin() as session:
            queue.set_limit(session, "pay", 2, burst=3)
        first = claim(queue, sessions)
        assert keys_of(first) == {"pay:send": 3, "mail:send": 5, "None:send": 2}
        assert {item.id for item in first} >= set(other) | set(free)
        assert claim(queue, sessions) == []  # no token left, nothing else due
        clock.advance(timedelta(seconds=1.4))  # 2.8 tokens: 2 whole ones
        assert keys_of(claim(queue, sessions)) == {"pay:send": 2}
        clock.advance(timedelta(seconds=0.3))  # 0.8 + 0.6 = 1.4
        assert keys_of(claim(queue, sessions)) == {"pay:send": 1}
        clock.advance(timedelta(seconds=60))  # capped at the burst
        assert keys_of(claim(queue, sessions)) == {"pay:send": 3}
        with sessions() as session:
            waiting = [queue.get(session, item_id) for item_id in limited]
            held = [item for item in waiting if item.status is RetryStatus.PENDING]
            assert len(held) == 1
            assert held[0].retry_count == 0 and held[0].last_attempted_at is None
            (limit,) = queue.key_limits(session)
        assert limit.key == "pay" and limit.rate_per_second == 2 and limit.burst == 3
        assert limit.throttled_claims == 5  # every claim above left pay items pending
        assert limit.tokens is not None and math.isclose(limit.tokens, 0.0, abs_tol=1e-6)

    def test_no_waiting_items_is_not_throttled(
        self, queue: RetryQueue, sessions: sessionmaker[Session]
    ) -> None:
        seed(queue, sessions, "pay", 2)
        with sessions.begin() as session:
            queue.set_limit(session, "pay", 1, burst=5)
        assert len(claim(queue, sessions)) == 2
        assert claim(queue, sessions) == []
        with sessions() as session:
            (limit,) = queue.key_limits(session)
        assert limit.throttled_claims == 0
        assert limit.tokens is not None and math.isclose(limit.tokens, 3.0)

    def test_batch_size_bounds_the_limited_claim(
        self, queue: RetryQueue, sessions: sessionmaker[Session]
    ) -> None:
        seed(queue, sessions, "pay", 10)
        with sessions.begin() as session:
            queue.set_limit(session, "pay", 5, burst=8)
        assert len(claim(queue, sessions, 3)) == 3
        assert len(claim(queue, sessions, 10)) == 5  # 8 - 3 tokens left
        assert claim(queue, sessions, 10) == []

    def test_pair_key_overrides_plugin_key(
        self, queue: RetryQueue, sessions: sessionmaker[Session]
    ) -> None:
        seed(queue, sessions, "pay", 5, "capture")
        seed(queue, sessions, "pay", 5, "refund")
        with sessions.begin() as session:
            queue.set_limit(session, "pay", 1, burst=2)
            queue.set_limit(session, "pay:refund", 1, burst=1)
        assert keys_of(claim(queue, sessions)) == {"pay:capture": 2, "pay:refund": 1}
        assert claim(queue, sessions) == []

    def test_probe_claim_respects_the_limit(
        self, queue: RetryQueue, sessions: sessionmaker[Session]
    ) -> None:
        seed(queue, sessions, "pay", 3)
        seed(queue, sessions, "mail", 3)
        with sessions.begin() as session:
            queue.set_limit(session, "pay", 1, burst=1)
        assert keys_of(claim(queue, sessions, 1, only_key="pay")) == {"pay:send": 1}
        assert claim(queue, sessions, 1, only_key="pay") == []
        assert keys_of(claim(queue, sessions, skip_keys=["mail"])) == {}

    def test_clear_limit(self, queue: RetryQueue, sessions: sessionmaker[Session]) -> None:
        seed(queue, sessions, "pay", 4)
        with sessions.begin() as session:
            queue.set_limit(session, "pay", 1, burst=1)
        assert len(claim(queue, sessions)) == 1
        with sessions.begin() as session:
            assert queue.clear_limit(session, "pay") is None
            assert queue.key_limits(session) == []
        assert len(claim(queue, sessions)) == 3

    def test_changing_a_limit_keeps_tokens_up_to_the_new_burst(
        self, queue: RetryQueue, sessions: sessionmaker[Session]
    ) -> None:
        with sessions.begin() as session:
            queue.set_limit(session, "pay", 1, burst=10)
            changed = queue.set_limit(session, "pay", 2, burst=4)
        assert (changed.rate_per_second, changed.burst, changed.tokens) == (2, 4, 4)


class TestPause:
    """A paused key's items are skipped by every claim until the pause ends."""

    def test_pause_and_expiry(
        self, queue: RetryQueue, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        seed(queue, sessions, "mail", 3)
        seed(queue, sessions, "pay", 2)
        with sessions.begin() as session:
            paused = queue.pause_key(session, "mail", seconds=30, reason="maintenance")
        assert paused.paused_until == clock.now() + timedelta(seconds=30)
        assert paused.pause_reason == "maintenance" and paused.rate_per_second is None
        assert keys_of(claim(queue, sessions)) == {"pay:send": 2}
        clock.advance(timedelta(seconds=29))
        assert claim(queue, sessions) == []
        clock.advance(timedelta(seconds=1))
        assert keys_of(claim(queue, sessions)) == {"mail:send": 3}
        queue.limit_presence.invalidate()
        with sessions() as session:
            assert queue.key_limits(session) == []
            assert not queue.limit_presence.active(session, clock.now())  # inert now

    def test_other_queue_objects_see_the_pause(
        self, queue: RetryQueue, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        other = RetryQueue(clock=clock)
        seed(queue, sessions, "mail", 2)
        assert claim(other, sessions, 1) != []  # `other` has looked: no limits then
        with sessions.begin() as session:
            queue.pause_key(session, "mail", until=clock.now() + timedelta(minutes=5))
        other.limit_presence.invalidate()  # as PRESENCE_TTL passing would
        assert claim(other, sessions) == []

    def test_pause_of_a_pair_and_of_a_plugin(
        self, queue: RetryQueue, sessions: sessionmaker[Session]
    ) -> None:
        seed(queue, sessions, "pay", 2, "capture")
        seed(queue, sessions, "pay", 2, "refund")
        with sessions.begin() as session:
            queue.pause_key(session, "pay:refund", seconds=60)
            queue.set_limit(session, "pay", 100)
        assert keys_of(claim(queue, sessions)) == {"pay:capture": 2}
        seed(queue, sessions, "pay", 1, "capture")
        with sessions.begin() as session:
            queue.pause_key(session, "pay", seconds=60)
            queue.clear_limit(session, "pay")
            queue.set_limit(session, "pay:refund", 100)
        assert claim(queue, sessions) == []  # the plugin's pause covers its pairs

    def test_idle_wait_counts_paused_items_from_the_pause_end(
        self, queue: RetryQueue, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        seed(queue, sessions, "mail", 2)
        with sessions.begin() as session:
            queue.pause_key(session, "mail", seconds=30)
        with sessions() as session:
            assert queue.seconds_until_claimable(session) == 30.0
        seed(queue, sessions, "pay", 1)
        with sessions() as session:
            due = queue.seconds_until_claimable(session)
        assert due is not None and due <= 0

    def test_pause_only_lengthens_and_resume_lifts(
        self, queue: RetryQueue, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        seed(queue, sessions, "mail", 1)
        with sessions.begin() as session:
            queue.pause_key(session, "mail", seconds=60)
            kept = queue.pause_key(session, "mail", seconds=10)
        assert kept.paused_until == clock.now() + timedelta(seconds=60)
        with sessions.begin() as session:
            assert queue.resume_key(session, "mail") is None
        assert len(claim(queue, sessions)) == 1

    def test_pause_item_key_spends_no_attempt(
        self, queue: RetryQueue, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        seed(queue, sessions, "mail", 3)
        (item,) = claim(queue, sessions, 1)
        with sessions.begin() as session:
            assert queue.pause_item_key(
                session, item, "mail", 30, error_message="429 Retry-After 30", error_code="429"
            )
        with sessions() as session:
            after = queue.get(session, item.id)
            (limit,) = queue.key_limits(session)
            rows = session.execute(
                select(RetryHistory.status, RetryHistory.attempt_number).where(
                    RetryHistory.retry_queue_id == item.id
                )
            ).all()
        assert after.status is RetryStatus.PENDING and after.retry_count == 0
        assert after.next_retry_at == clock.now() + timedelta(seconds=30)
        assert after.last_error_code == "429"
        assert [tuple(row) for row in rows] == [("paused", 1)]
        assert limit.paused_until == clock.now() + timedelta(seconds=30)
        assert claim(queue, sessions) == []  # the other two wait for the pause too
        clock.advance(timedelta(seconds=30))
        assert len(claim(queue, sessions)) == 3
        with sessions.begin() as session:  # a lost lease: nothing written
            assert not queue.pause_item_key(session, item, "mail", 30)
            assert queue.key_limits(session) == []


class TestBadInput:
    """Bad values are refused with one clear error, and nothing is written."""

    @pytest.mark.parametrize(
        ("key", "rate", "burst", "wanted"),
        [
            ("pay", -1, None, "rate"),
            ("pay", 0, None, "rate"),
            ("pay", float("nan"), None, "rate"),
            ("pay", float("inf"), None, "rate"),
            ("pay", True, None, "rate"),
            ("pay", "20", None, "rate"),
            ("pay", 2e6, None, "rate"),
            ("pay", 1, 0.5, "burst"),
            ("pay", 1, -3, "burst"),
            ("pay", 1, 1e7, "burst"),
            ("", 1, None, "key"),
            ("   ", 1, None, "key"),
            ("pay:", 1, None, "key"),
            (":refund", 1, None, "key"),
            ("p" * 600, 1, None, "key"),
        ],
    )
    def test_set_limit(
        self,
        queue: RetryQueue,
        sessions: sessionmaker[Session],
        key: str,
        rate: Any,
        burst: Any,
        wanted: str,
    ) -> None:
        with sessions.begin() as session, pytest.raises(InvalidArgument) as caught:
            queue.set_limit(session, key, rate, burst)
        assert caught.value.field == wanted
        with sessions() as session:
            assert session.scalars(select(RetryLimit.limit_key)).all() == []

    @pytest.mark.parametrize(
        ("settings", "wanted"),
        [
            ({"seconds": -5}, "seconds"),
            ({"seconds": 0}, "seconds"),
            ({"seconds": float("nan")}, "seconds"),
            ({"seconds": 10 * 365 * 86400}, "seconds"),
            ({"until_in": -1}, "until"),
            ({"until_in": 0}, "until"),
            ({"until_in": 10 * 365 * 86400}, "until"),
            ({"naive": True}, "until"),
            ({}, "until"),
            ({"seconds": 5, "until_in": 5}, "until"),
        ],
    )
    def test_pause(
        self,
        queue: RetryQueue,
        sessions: sessionmaker[Session],
        clock: ManualClock,
        settings: dict[str, Any],
        wanted: str,
    ) -> None:
        kwargs: dict[str, Any] = {}
        if "seconds" in settings:
            kwargs["seconds"] = settings["seconds"]
        if "until_in" in settings:
            kwargs["until"] = clock.now() + timedelta(seconds=settings["until_in"])
        if settings.get("naive"):
            kwargs["until"] = clock.now().replace(tzinfo=None) + timedelta(minutes=1)
        with sessions.begin() as session, pytest.raises(InvalidArgument) as caught:
            queue.pause_key(session, "mail", **kwargs)
        assert caught.value.field == wanted
        with sessions() as session:
            assert session.scalars(select(RetryLimit.limit_key)).all() == []

    def test_unknown_keys(self, queue: RetryQueue, sessions: sessionmaker[Session]) -> None:
        with sessions.begin() as session:
            queue.set_limit(session, "pay", 5)
        with sessions.begin() as session:
            with pytest.raises(
                InvalidArgument, match=r"'mail' has no rate limit \(limited keys: pay\)"
            ):
                queue.clear_limit(session, "mail")
            with pytest.raises(InvalidArgument, match="'pay' is not paused"):
                queue.resume_key(session, "pay")
        with sessions() as session:
            assert [row.key for row in queue.key_limits(session)] == ["pay"]


class TestIdleCost:
    """Without limits or pauses the claim statement is the one without this feature, and
    the presence check costs one query per PRESENCE_TTL, not one per claim."""

    def test_statement_unchanged(self) -> None:
        import uuid

        plain, _ = claim_statement(None, "w", uuid.uuid4(), 10, lock_timeout=30)
        again, params = claim_statement(
            None, "w", uuid.uuid4(), 10, lock_timeout=30, limit_filter=None
        )
        assert plain is again and not any(name.startswith("limit_") for name in params)

    def test_one_statement_per_claim(
        self, engine: Engine, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        seed(queue, sessions, "pay", 3)
        queue.limit_presence.ttl = 3600.0
        statements: list[str] = []

        def count(*args: Any) -> None:
            statements.append(args[2])

        event.listen(engine, "before_cursor_execute", count)
        try:
            claim(queue, sessions, 1)
            first = len(statements)
            claim(queue, sessions, 1)
            second = len(statements) - first
        finally:
            event.remove(engine, "before_cursor_execute", count)
        assert any("daz_retry_limits" in text for text in statements[:first])
        assert not any("daz_retry_limits" in text for text in statements[first:])
        assert second == first - 1
