"""Rate limits and pauses through every front (sync, and each async driver)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from retryqueue import ManualClock, NewItem


def test_limit_and_pause_through_the_front(sessions: Any, queue: Any, clock: ManualClock) -> None:
    with sessions.begin() as session:
        queue.enqueue_many(
            session,
            [NewItem("capture", {}, plugin_name="pay") for _ in range(4)]
            + [NewItem("send", {}, plugin_name="mail") for _ in range(2)],
        )
        assert queue.set_limit(session, "pay", 1, burst=2).burst == 2
        queue.pause_key(session, "mail", seconds=60, reason="429")
    with sessions.begin() as session:
        first = queue.acquire(session, "w", 10)
    assert [item.plugin_name for item in first] == ["pay", "pay"]
    with sessions.begin() as session:
        limits = {row.key: row for row in queue.key_limits(session)}
        assert limits["pay"].throttled_claims == 1 and limits["mail"].pause_reason == "429"
        assert queue.resume_key(session, "mail") is None
        (paused,) = queue.acquire(session, "w", 1, only_key="mail")
        assert queue.pause_item_key(session, paused, "mail", 30, error_code="HTTP_429")
    clock.advance(timedelta(seconds=1))
    with sessions.begin() as session:
        second = queue.acquire(session, "w", 10)
        assert queue.clear_limit(session, "pay") is None
    assert [item.plugin_name for item in second] == ["pay"]  # mail paused again by the item
