"""Bad input across the whole API: a clear error of the library's family, nothing written.

Each call below is malformed in one way (type, range, length, encoding, NaN/Infinity,
lone surrogate, nesting depth, unknown status, naive datetime, negative size or timeout).
The test snapshots both tables before and after: a rejected call must change nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import (
    InvalidArgument,
    ItemFilter,
    ManualClock,
    NewItem,
    RetryPolicy,
    RetryQueue,
    RetryQueueError,
)
from retryqueue.models import RetryHistory, RetryItem

pytestmark = pytest.mark.reliability

Call = Callable[[RetryQueue, Session, Any], object]


def nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = {"next": value}
    return value


def enqueue(**overrides: object) -> Call:
    def call(queue: RetryQueue, session: Session, claimed: Any) -> object:
        kwargs: dict[str, Any] = {"event_type": "ok", "event_data": {"ok": True}, **overrides}
        return queue.enqueue(session, **kwargs)

    return call


NAIVE = datetime(2026, 1, 1, 12, 0)

MATRIX: dict[str, tuple[str, Call]] = {
    # enqueue: types, ranges, lengths, encodings, JSON edge cases, times
    "priority 0": ("priority", enqueue(priority=0)),
    "priority 11": ("priority", enqueue(priority=11)),
    "priority as text": ("priority", enqueue(priority="high")),
    "priority float": ("priority", enqueue(priority=5.5)),
    "negative max_retries": ("max_retries", enqueue(max_retries=-1)),
    "huge max_retries": ("max_retries", enqueue(max_retries=10**9)),
    "negative delay seconds": ("retry_delay_seconds", enqueue(retry_delay_seconds=-60)),
    "multiplier 12.5": ("backoff_multiplier", enqueue(backoff_multiplier=12.5)),
    "multiplier infinity": ("backoff_multiplier", enqueue(backoff_multiplier=float("inf"))),
    "empty event_type": ("event_type", enqueue(event_type="")),
    "256-char event_type": ("event_type", enqueue(event_type="e" * 256)),
    "bytes event_type": ("event_type", enqueue(event_type=b"chat")),
    "NUL in plugin": ("plugin_name", enqueue(plugin_name="sq\x00l")),
    "surrogate in channel": ("channel_name", enqueue(channel_name="chan\udc80")),
    "51-char-ish correlation": ("correlation_id", enqueue(correlation_id="c" * 300)),
    "NaN in data": ("event_data", enqueue(event_data={"amount": float("nan")})),
    "-Infinity in data": ("event_data", enqueue(event_data=[float("-inf")])),
    "lone surrogate in data": ("event_data", enqueue(event_data={"text": "\ud83d"})),
    "surrogate in a key": ("event_data", enqueue(event_data={"\udfff": 1})),
    "set in data": ("event_data", enqueue(event_data={"tags": {"a", "b"}})),
    "bytes in data": ("event_data", enqueue(event_data={"blob": b"\x00\x01"})),
    "nesting 100 deep": ("event_data", enqueue(event_data=nested(100))),
    "metadata not a mapping": ("event_metadata", enqueue(event_metadata="x=1")),
    "naive run_at": ("run_at", enqueue(run_at=NAIVE)),
    "naive expires_at": ("expires_at", enqueue(expires_at=NAIVE)),
    "negative delay": ("delay", enqueue(delay=timedelta(seconds=-1))),
    "NaN delay": ("delay", enqueue(delay=float("nan"))),
    "zero ttl": ("ttl", enqueue(ttl=0)),
    "tags as a string": ("tags", enqueue(tags="urgent")),
    "bad event_id": ("event_id", enqueue(event_id="1234")),
    "unknown keyword": ("colour", enqueue(colour="red")),
    "not a NewItem": (
        "items[0]",
        lambda q, s, c: q.enqueue_many(s, [{"event_type": "x", "event_data": {}}]),
    ),
    # impossible schedules, huge durations, reserved markers (issue 14, points 5 and 12)
    "huge delay": ("delay", enqueue(delay=1e20)),
    "huge int ttl": ("ttl", enqueue(ttl=10**400)),
    "infinite ttl": ("ttl", enqueue(ttl=float("inf"))),
    "delay past the default ttl": ("delay", enqueue(delay=timedelta(days=8))),
    "delay past its ttl": ("delay", enqueue(delay=3600, ttl=60)),
    "run_at past the default ttl": (
        "run_at",
        lambda q, s, c: q.enqueue(s, "ok", {}, run_at=q.clock.now() + timedelta(days=8)),
    ),
    "expires_at before the delay": (
        "expires_at",
        lambda q, s, c: q.enqueue(
            s, "ok", {}, delay=7200, expires_at=q.clock.now() + timedelta(hours=1)
        ),
    ),
    "reserved encryption marker": (
        "event_data",
        enqueue(event_data={"$retryqueue_encrypted": "gAAAAAB-forged"}),
    ),
    # acquisition and leases
    "negative batch size": ("batch_size", lambda q, s, c: q.acquire(s, "w", batch_size=-1)),
    "zero batch size": ("batch_size", lambda q, s, c: q.acquire(s, "w", batch_size=0)),
    "negative lock timeout": ("lock_timeout", lambda q, s, c: q.acquire(s, "w", lock_timeout=-5)),
    "NaN lock timeout": (
        "lock_timeout",
        lambda q, s, c: q.acquire(s, "w", lock_timeout=float("nan")),
    ),
    "empty worker id": ("worker_id", lambda q, s, c: q.acquire(s, "")),
    "worker id too long": ("worker_id", lambda q, s, c: q.heartbeat(s, "w" * 300)),
    "item ids not ints": ("item_ids", lambda q, s, c: q.release(s, "w1", ["1"])),
    "complete without worker": ("worker_id", lambda q, s, c: q.complete(s, c.id)),
    "fail code too long": (
        "error_code",
        lambda q, s, c: q.fail(s, c, error_message="x", error_code="E" * 51),
    ),
    "fail message not text": ("error_message", lambda q, s, c: q.fail(s, c, error_message=42)),
    "negative retry_after": (
        "retry_after",
        lambda q, s, c: q.fail(s, c, error_message="x", retry_after=-3),
    ),
    "huge lock timeout": ("lock_timeout", lambda q, s, c: q.acquire(s, "w", lock_timeout=1e300)),
    "infinite retry_after": (
        "retry_after",
        lambda q, s, c: q.fail(s, c, error_message="x", retry_after=float("inf")),
    ),
    "huge retry_after": (
        "retry_after",
        lambda q, s, c: q.fail(s, c, error_message="x", retry_after=3e11),
    ),
    "retryable as text": (
        "retryable",
        lambda q, s, c: q.fail(s, c, error_message="x", retryable="no"),
    ),
    "fail duration as text": (
        "duration_ms",
        lambda q, s, c: q.fail(s, c, error_message="x", duration_ms="abc"),
    ),
    "complete duration as text": (
        "duration_ms",
        lambda q, s, c: q.complete(s, c, duration_ms="abc"),
    ),
    "negative duration": ("duration_ms", lambda q, s, c: q.complete(s, c, duration_ms=-1)),
    "durations as text": (
        "durations_ms",
        lambda q, s, c: q.complete_many(s, [c], durations_ms=["abc"]),
    ),
    # administration and monitoring
    "requested_by too long": (
        "requested_by",
        lambda q, s, c: q.requeue(s, [c.id], requested_by="r" * 300),
    ),
    "huge retention": ("retention_days", lambda q, s, c: q.cleanup(s, retention_days=1e9)),
    "huge stuck age": ("older_than", lambda q, s, c: q.stuck(s, older_than=1e300)),
    "unknown status name": (
        "statuses",
        lambda q, s, c: q.requeue(s, ItemFilter(statuses=["dead"])),  # type: ignore[list-item]
    ),
    "requeue processing": (
        "statuses",
        lambda q, s, c: q.requeue(s, ItemFilter(statuses=["processing"])),  # type: ignore[list-item]
    ),
    "naive filter time": (
        "created_after",
        lambda q, s, c: q.requeue(s, ItemFilter(created_after=NAIVE)),
    ),
    "purge unknown status": (
        "statuses",
        lambda q, s, c: q.purge(s, ItemFilter(statuses=["gone"])),  # type: ignore[list-item]
    ),
    "zero limit": ("limit", lambda q, s, c: q.requeue(s, ItemFilter(limit=0))),
    "negative retention": ("retention_days", lambda q, s, c: q.cleanup(s, retention_days=-7)),
    "retention as text": ("retention_days", lambda q, s, c: q.cleanup(s, retention_days="7")),
    "zero cleanup batch": ("batch_size", lambda q, s, c: q.cleanup(s, batch_size=0)),
    "negative stuck age": ("older_than", lambda q, s, c: q.stuck(s, older_than=-1)),
    "zero hours": ("hours", lambda q, s, c: q.items_per_hour(s, hours=0)),
    "unknown grouping": ("group_by", lambda q, s, c: q.dead_letter_groups(s, "colour")),
}


def snapshot(session: Session) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    items = [
        (i.id, i.status, i.retry_count, i.locked_by, i.locked_at, i.next_retry_at, i.error_message)
        for i in session.scalars(select(RetryItem).order_by(RetryItem.id))
    ]
    history = [(h.id, h.status) for h in session.scalars(select(RetryHistory))]
    return items, history


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_every_malformed_call_is_refused_and_writes_nothing(
    sessions: sessionmaker[Session], clock: ManualClock
) -> None:
    queue = RetryQueue(clock=clock)
    with sessions.begin() as session:
        queue.enqueue_many(session, [NewItem("seed", {"i": i}) for i in range(3)])
        queue.enqueue(session, "dead", {}, max_retries=0)
    with sessions.begin() as session:
        claimed = queue.acquire(session, "w1", batch_size=10)
    with sessions.begin() as session:
        queue.fail(session, next(c for c in claimed if c.event_type == "dead"), error_message="x")
    live = next(c for c in claimed if c.event_type == "seed")
    with sessions() as session:
        before = snapshot(session)
    refused = []
    for name, (field, call) in MATRIX.items():
        with sessions() as session:
            with pytest.raises(RetryQueueError) as caught:
                call(queue, session, live)
            session.commit()  # commit whatever a faulty call might have written
        assert isinstance(caught.value, InvalidArgument), f"{name}: {caught.value!r}"
        assert field in str(caught.value), f"{name}: {caught.value}"
        refused.append(name)
    with sessions() as session:
        assert snapshot(session) == before
    assert len(refused) == len(MATRIX) >= 50


def test_policy_and_clock_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=2)
    with pytest.raises(InvalidArgument, match="naive"):
        ManualClock(NAIVE)
    with pytest.raises(InvalidArgument, match="max_payload_bytes"):
        RetryQueue(max_payload_bytes=0)
