"""acquire(skip_keys=..., only_key=...): open circuits' items stay pending and spend nothing."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import Update
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import (
    CircuitBreaker,
    InvalidArgument,
    ManualClock,
    NewItem,
    RetryQueue,
    RetryStatus,
)
from retryqueue.statements import claim as claim_statement


def seed(queue: RetryQueue, sessions: sessionmaker[Session]) -> dict[str, int]:
    """One pending item per (plugin, event type), and one without a plugin."""
    items = {
        "pay/capture": NewItem("capture", {}, plugin_name="pay", priority=9),
        "pay/refund": NewItem("refund", {}, plugin_name="pay", priority=8),
        "mail/send": NewItem("send", {}, plugin_name="mail", priority=7),
        "none/ping": NewItem("ping", {}, priority=6),
    }
    with sessions.begin() as session:
        made = queue.enqueue_many(session, list(items.values()))
    return {name: item.id for name, item in zip(items, made, strict=True)}


def claim(queue: RetryQueue, sessions: sessionmaker[Session], **keys: object) -> list[int]:
    with sessions.begin() as session:
        return [item.id for item in queue.acquire(session, "w", 10, **keys)]  # type: ignore[arg-type]


class TestSkipKeys:
    """Skipped keys' items are not claimed; items without a plugin never are skipped."""

    def test_skip_plugins(self, queue: RetryQueue, sessions: sessionmaker[Session]) -> None:
        ids = seed(queue, sessions)
        assert claim(queue, sessions, skip_keys={"pay", "other"}) == [
            ids["mail/send"],
            ids["none/ping"],
        ]
        with sessions() as session:
            for name in ("pay/capture", "pay/refund"):
                item = queue.get(session, ids[name])
                assert item.status is RetryStatus.PENDING and item.retry_count == 0
        assert claim(queue, sessions) == [ids["pay/capture"], ids["pay/refund"]]

    def test_skip_plugin_and_event_type(
        self, queue: RetryQueue, sessions: sessionmaker[Session]
    ) -> None:
        ids = seed(queue, sessions)
        claimed = claim(queue, sessions, skip_keys=["pay:capture"], per_event_type=True)
        assert claimed == [ids["pay/refund"], ids["mail/send"], ids["none/ping"]]

    def test_the_gate_drives_the_claim(
        self, queue: RetryQueue, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        ids = seed(queue, sessions)
        breaker = CircuitBreaker(failure_threshold=1, clock=clock)
        with sessions.begin() as session:
            breaker.record(session, [("pay", "capture", False)])
            gate = breaker.gate(session)
            claimed = queue.acquire(
                session, "w", 10, skip_keys=gate.blocked, per_event_type=gate.per_event_type
            )
        assert [item.id for item in claimed] == [ids["mail/send"], ids["none/ping"]]

    def test_no_keys_uses_the_plain_cached_claim(self) -> None:
        def template(**keys: Any) -> Update:
            return claim_statement(None, "w", uuid.uuid4(), 10, lock_timeout=60, **keys)[0]

        plain = template()
        assert template(skip_keys=(), per_event_type=True) is plain
        assert "plugin_name IS NULL" not in str(plain)
        assert template(skip_keys=["a"]) is template(skip_keys=["b", "c"])
        assert "NOT IN" in str(template(skip_keys=["a"]))

    def test_one_string_is_not_a_key_collection(
        self, queue: RetryQueue, sessions: sessionmaker[Session]
    ) -> None:
        with sessions.begin() as session, pytest.raises(InvalidArgument, match="skip_keys"):
            queue.acquire(session, "w", 10, skip_keys="pay")


class TestOnlyKey:
    """The probe claims one item of its key only."""

    def test_only_plugin(self, queue: RetryQueue, sessions: sessionmaker[Session]) -> None:
        ids = seed(queue, sessions)
        with sessions.begin() as session:
            (probe,) = queue.acquire(session, "w", 1, only_key="mail")
        assert probe.id == ids["mail/send"]
        assert claim(queue, sessions, only_key="mail") == []
        assert claim(queue, sessions, only_key="nobody") == []

    def test_only_plugin_and_event_type(
        self, queue: RetryQueue, sessions: sessionmaker[Session]
    ) -> None:
        ids = seed(queue, sessions)
        assert claim(queue, sessions, only_key="pay:refund", per_event_type=True) == [
            ids["pay/refund"]
        ]

    def test_a_half_open_probe_end_to_end(
        self, queue: RetryQueue, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        ids = seed(queue, sessions)
        breaker = CircuitBreaker(failure_threshold=1, cooldown=30, clock=clock)
        with sessions.begin() as session:
            breaker.record(session, [("pay", "capture", False)])
        clock.advance(30)
        with sessions.begin() as session:
            gate = breaker.gate(session, owner="w")
            probes = [
                item for key in gate.probes for item in queue.acquire(session, "w", 1, only_key=key)
            ]
            rest = queue.acquire(session, "w", 10, skip_keys=gate.blocked)
        assert [item.id for item in probes] == [ids["pay/capture"]]
        assert [item.id for item in rest] == [ids["mail/send"], ids["none/ping"]]
        with sessions.begin() as session:
            queue.complete(session, probes[0])
            breaker.record(session, [(probes[0].plugin_name, probes[0].event_type, True)])
            assert breaker.gate(session).blocked == frozenset()
        assert claim(queue, sessions) == [ids["pay/refund"]]
