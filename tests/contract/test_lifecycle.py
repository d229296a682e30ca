"""Acquire, complete, fail, heartbeat, release and fencing on every backend."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import (
    ClaimedItem,
    InvalidArgument,
    ManualClock,
    NewItem,
    RetryPolicy,
    RetryQueue,
    RetryStatus,
    encryption,
)
from retryqueue.models import RetryHistory, RetryItem
from tests.contract.conftest import on_front


def item(sessions: sessionmaker[Session], item_id: int) -> RetryItem:
    with sessions() as session:
        return session.get_one(RetryItem, item_id)


def history(sessions: sessionmaker[Session], item_id: int) -> list[RetryHistory]:
    with sessions() as session:
        return list(
            session.scalars(
                select(RetryHistory)
                .where(RetryHistory.retry_queue_id == item_id)
                .order_by(RetryHistory.id)
            )
        )


def enqueue(sessions: sessionmaker[Session], queue: RetryQueue, **fields: object) -> int:
    with sessions.begin() as session:
        return queue.enqueue(session, str(fields.pop("event_type", "e")), {}, **fields).id


def acquire(
    sessions: sessionmaker[Session], queue: RetryQueue, worker: str = "w1", **kw: object
) -> list[ClaimedItem]:
    with sessions.begin() as session:
        return queue.acquire(session, worker, **kw)  # type: ignore[arg-type]


class TestAcquire:
    """Acquisition claims due, unlocked, unexpired items in priority order."""

    def test_claims_in_priority_then_due_then_id_order(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        low = enqueue(sessions, queue, priority=1)
        high_later = enqueue(
            sessions, queue, priority=10, run_at=clock.now() - timedelta(seconds=5)
        )
        high_earlier = enqueue(
            sessions, queue, priority=10, run_at=clock.now() - timedelta(seconds=10)
        )
        middle_a = enqueue(sessions, queue, priority=5)
        middle_b = enqueue(sessions, queue, priority=5)
        claimed = acquire(sessions, queue, batch_size=10)
        assert [c.id for c in claimed] == [high_earlier, high_later, middle_a, middle_b, low]

    def test_batch_size_limits_the_claim(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        with sessions.begin() as session:
            queue.enqueue_many(session, [NewItem("e", {"i": i}) for i in range(7)])
        assert len(acquire(sessions, queue, batch_size=3)) == 3
        assert len(acquire(sessions, queue, "w2", batch_size=10)) == 4
        assert acquire(sessions, queue, "w3") == []

    def test_sets_processing_lock_and_a_fresh_lease(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        item_id = enqueue(sessions, queue)
        (claimed,) = acquire(sessions, queue, "worker-7")
        row = item(sessions, item_id)
        assert row.status is RetryStatus.PROCESSING
        assert (row.locked_by, row.locked_at) == ("worker-7", clock.now())
        assert row.lease_token == claimed.lease_token is not None
        assert claimed.attempt == 1 and claimed.locked_by == "worker-7"

    def test_skips_items_not_yet_due_or_expired(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        later = enqueue(sessions, queue, delay=60)
        enqueue(sessions, queue, ttl=30)
        clock.advance(31)
        assert acquire(sessions, queue) == []  # one expired, one not yet due
        clock.advance(30)
        assert [c.id for c in acquire(sessions, queue)] == [later]

    def test_handler_data_is_read_only(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        with sessions.begin() as session:
            queue.enqueue(session, "e", {"list": [1, {"k": "v"}]}, event_metadata={"m": 1})
        (claimed,) = acquire(sessions, queue)
        assert claimed.event_data["list"][1]["k"] == "v"
        with pytest.raises(TypeError):
            claimed.event_data["new"] = 1
        with pytest.raises(AttributeError):
            claimed.retry_count = 9  # type: ignore[misc]

    @pytest.mark.parametrize(
        ("field", "kw"),
        [
            ("batch_size", {"batch_size": 0}),
            ("batch_size", {"batch_size": -3}),
            ("lock_timeout", {"lock_timeout": 0}),
            ("lock_timeout", {"lock_timeout": -1}),
            ("worker_id", {"worker_id": ""}),
        ],
    )
    def test_bad_arguments_are_refused(
        self, sessions: sessionmaker[Session], queue: RetryQueue, field: str, kw: dict[str, object]
    ) -> None:
        enqueue(sessions, queue)
        kw = dict(kw)
        worker = str(kw.pop("worker_id", "w1"))
        with pytest.raises(InvalidArgument, match=field):
            acquire(sessions, queue, worker, **kw)


class TestStaleLocks:
    """Locks older than lock_timeout are reclaimed, whoever held them."""

    def test_another_workers_stale_lock_is_reclaimed_and_counted(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        item_id = enqueue(sessions, queue, retry_delay_seconds=10)
        acquire(sessions, queue, "crashed", lock_timeout=300)
        clock.advance(299)
        assert acquire(sessions, queue, "rescuer", lock_timeout=300) == []
        clock.advance(2)
        # Reclaimed as a failed attempt: due after the backoff delay.
        assert acquire(sessions, queue, "rescuer", lock_timeout=300) == []
        row = item(sessions, item_id)
        assert (row.status, row.retry_count, row.locked_by) == (RetryStatus.PENDING, 1, None)
        assert row.last_error_code == "LOCK_EXPIRED"
        clock.advance(10)
        (claimed,) = acquire(sessions, queue, "rescuer", lock_timeout=300)
        assert claimed.attempt == 2
        (expired,) = history(sessions, item_id)
        assert (expired.status, expired.worker_id, expired.attempt_number) == (
            "lock_expired",
            "crashed",
            1,
        )

    def test_poison_item_ends_in_dead_letter(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        item_id = enqueue(sessions, queue, max_retries=1, retry_delay_seconds=0)
        for _ in range(2):
            assert len(acquire(sessions, queue, lock_timeout=10)) == 1
            clock.advance(11)
        acquire(sessions, queue, lock_timeout=10)
        assert item(sessions, item_id).status is RetryStatus.DEAD_LETTER
        assert [h.status for h in history(sessions, item_id)] == ["lock_expired"] * 2

    def test_uncounted_reclaim_keeps_the_retry_budget(
        self,
        sessions: sessionmaker[Session],
        clock: ManualClock,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        lenient = on_front(RetryQueue(clock=clock, count_expired_locks=False), loop)
        item_id = enqueue(sessions, lenient, max_retries=0)
        acquire(sessions, lenient, lock_timeout=10)
        clock.advance(11)
        (again,) = acquire(sessions, lenient, "w2", lock_timeout=10)
        assert again.id == item_id and again.retry_count == 0


class TestOutcomes:
    """Only the lease holder records an outcome; failures follow the documented backoff."""

    def test_complete_by_holder(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        item_id = enqueue(sessions, queue)
        (claimed,) = acquire(sessions, queue)
        clock.advance(2)
        with sessions.begin() as session:
            assert queue.complete(session, claimed, duration_ms=1500)
        row = item(sessions, item_id)
        assert (row.status, row.completed_at, row.locked_by, row.lease_token) == (
            RetryStatus.COMPLETED,
            clock.now(),
            None,
            None,
        )
        (done,) = history(sessions, item_id)
        assert (done.status, done.attempt_number, done.worker_id, done.duration_ms) == (
            "completed",
            1,
            "w1",
            1500,
        )

    def test_complete_by_id_checks_the_lease(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        item_id = enqueue(sessions, queue)
        (claimed,) = acquire(sessions, queue, "owner")
        with sessions.begin() as session:
            wrong = uuid.uuid4()
            assert not queue.complete(session, item_id, "owner", lease_token=wrong)
            assert not queue.fail(session, item_id, "owner", "boom", lease_token=wrong)
        assert item(sessions, item_id).status is RetryStatus.PROCESSING
        with sessions.begin() as session:
            assert queue.complete(session, item_id, "owner", lease_token=claimed.lease_token)
        with sessions.begin() as session:  # not processing any more
            assert not queue.complete(session, item_id, "owner", lease_token=claimed.lease_token)
        assert len(history(sessions, item_id)) == 1

    def test_documented_backoff_then_dead_letter(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        item_id = enqueue(sessions, queue, max_retries=3, retry_delay_seconds=60)
        waits = []
        for _ in range(4):
            (claimed,) = acquire(sessions, queue)
            with sessions.begin() as session:
                assert queue.fail(
                    session, claimed, error_message="Connection timeout", error_code="TIMEOUT"
                )
            row = item(sessions, item_id)
            if row.status is RetryStatus.PENDING:
                waits.append((row.next_retry_at - clock.now()).total_seconds())
                clock.set(row.next_retry_at)
        assert waits == [60, 120, 240]
        row = item(sessions, item_id)
        assert (row.status, row.retry_count) == (RetryStatus.DEAD_LETTER, 3)
        assert (row.error_message, row.last_error_code) == ("Connection timeout", "TIMEOUT")
        assert [h.status for h in history(sessions, item_id)] == [
            "retry_scheduled",
            "retry_scheduled",
            "retry_scheduled",
            "dead_lettered",
        ]
        assert [h.attempt_number for h in history(sessions, item_id)] == [1, 2, 3, 4]

    def test_non_retryable_failure_is_failed_at_once(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        item_id = enqueue(sessions, queue, max_retries=5)
        (claimed,) = acquire(sessions, queue)
        with sessions.begin() as session:
            assert queue.fail(
                session,
                claimed,
                error_message="bad request",
                error_code="HTTP_400",
                retryable=False,
            )
        row = item(sessions, item_id)
        assert (row.status, row.retry_count) == (RetryStatus.FAILED, 0)
        assert history(sessions, item_id)[0].status == "failed"

    def test_retry_after_overrides_the_backoff(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        item_id = enqueue(sessions, queue)
        (claimed,) = acquire(sessions, queue)
        with sessions.begin() as session:
            queue.fail(session, claimed, error_message="429", retry_after=7)
        row = item(sessions, item_id)
        assert row.next_retry_at == clock.now() + timedelta(seconds=7)
        assert row.retry_count == 1

    def test_policy_caps_the_delay(
        self,
        sessions: sessionmaker[Session],
        clock: ManualClock,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        policy = RetryPolicy(max_delay=timedelta(seconds=90))
        capped = on_front(RetryQueue(clock=clock, policy=policy), loop)
        item_id = enqueue(sessions, capped, retry_delay_seconds=60, max_retries=5)
        for expected in (60, 90, 90):
            (claimed,) = acquire(sessions, capped)
            with sessions.begin() as session:
                capped.fail(session, claimed, error_message="x")
            row = item(sessions, item_id)
            assert (row.next_retry_at - clock.now()).total_seconds() == expected
            clock.set(row.next_retry_at)

    def test_complete_many_skips_lost_leases(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        with sessions.begin() as session:
            queue.enqueue_many(session, [NewItem("e", {"i": i}) for i in range(3)])
        claimed = acquire(sessions, queue, batch_size=3, lock_timeout=10)
        clock.advance(8)
        with sessions.begin() as session:  # the third item gets no heartbeat ...
            queue.heartbeat(
                session,
                "w1",
                [claimed[0].id, claimed[1].id],
                lease_token=claimed[0].lease_token,
                lock_timeout=10,
            )
        clock.advance(4)
        # ... so at 12 s its lock is stale and another worker reclaims it.
        acquire(sessions, queue, "w2", batch_size=5, lock_timeout=10)
        assert item(sessions, claimed[2].id).last_error_code == "LOCK_EXPIRED"
        with sessions.begin() as session:
            done = queue.complete_many(session, claimed, durations_ms=[5, 6, 7])
        assert done == {claimed[0].id, claimed[1].id}
        assert item(sessions, claimed[2].id).status is RetryStatus.PENDING

    def test_complete_and_acquire_fences_lost_leases_and_claims_the_next(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        with sessions.begin() as session:
            queue.enqueue_many(session, [NewItem("e", {"i": i}) for i in range(4)])
        kept, lost = acquire(sessions, queue, batch_size=2, lock_timeout=10)
        clock.advance(8)
        with sessions.begin() as session:  # the second item gets no heartbeat ...
            queue.heartbeat(session, "w1", [kept.id], lease_token=kept.lease_token, lock_timeout=10)
        clock.advance(4)
        # ... so w2 reclaims it (not due again yet: backoff) and claims a third item.
        (taken,) = acquire(sessions, queue, "w2", batch_size=1, lock_timeout=10)
        with sessions.begin() as session:
            done, claimed = queue.complete_and_acquire(
                session, [kept, lost], "w1", 5, 10, durations_ms=[5, 6], reclaim_stale=False
            )
        assert done == {kept.id}
        (last,) = claimed
        assert last.id not in {kept.id, lost.id, taken.id}
        assert (last.locked_by, item(sessions, last.id).status) == ("w1", RetryStatus.PROCESSING)
        assert item(sessions, kept.id).status is RetryStatus.COMPLETED
        assert [(h.status, h.worker_id, h.duration_ms) for h in history(sessions, kept.id)] == [
            ("completed", "w1", 5)
        ]
        # The refused outcome left no history row: only the reclaim's.
        assert [h.status for h in history(sessions, lost.id)] == ["lock_expired"]

    def test_complete_and_acquire_claims_items_as_acquire_reads_them(
        self, sessions: sessionmaker[Session], server_clock_queue: RetryQueue
    ) -> None:
        """The combined flush reads its claimed rows its own way on PostgreSQL (as the
        driver returns them): every field must come out as acquire gives it, typed the
        same, the payload decrypted and the times in UTC."""
        queue = server_clock_queue
        fields: dict[str, Any] = {
            "channel_name": "chan",
            "plugin_name": "plug",
            "event_metadata": {"m": [1, {"n": None}]},
            "backoff_multiplier": 1.25,
            "priority": 7,
            "correlation_id": "corr",
            "tags": ["a", "b"],
        }
        encryption.configure([encryption.generate_key()])
        try:
            with sessions.begin() as session:
                queue.enqueue_many(
                    session, [NewItem("e", {"secret": [n, "x"]}, **fields) for n in range(2)]
                )
            (first,) = acquire(sessions, queue, batch_size=1)
            with sessions.begin() as session:
                if session.get_bind().dialect.name == "postgresql":  # psycopg: times come
                    session.execute(text("SET LOCAL TIME ZONE 'Asia/Kolkata'"))  # in this zone
                done, (second,) = queue.complete_and_acquire(
                    session, [first], "w1", 1, reclaim_stale=False
                )
        finally:
            encryption.configure(None)
        assert done == {first.id}
        assert second.event_data == {"secret": (1, "x")}  # frozen, as acquire gives it
        assert first.event_data == {"secret": (0, "x")}
        skip = {"id", "event_id", "event_data", "created_at", "next_retry_at", "locked_at"}
        skip.add("lease_token")
        for name in ClaimedItem.__dataclass_fields__:
            ours, theirs = getattr(second, name), getattr(first, name)
            assert type(ours) is type(theirs), name
            if name not in skip:
                assert ours == theirs, name
        for moment in (second.created_at, second.next_retry_at, second.locked_at):
            assert moment is not None and moment.utcoffset() == timedelta(0)
        assert second.lease_token != first.lease_token


class TestFencing:
    """A worker whose lease was lost cannot overwrite the new owner's outcome."""

    def test_same_worker_id_reacquiring_fences_the_old_lease(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        item_id = enqueue(sessions, queue, retry_delay_seconds=0)
        (old,) = acquire(sessions, queue, "w1", lock_timeout=10)
        clock.advance(11)
        (new,) = acquire(sessions, queue, "w1", lock_timeout=10)  # reclaims, then claims
        assert new.lease_token != old.lease_token
        with sessions.begin() as session:
            assert not queue.complete(session, old)
            assert not queue.fail(session, old, error_message="late")
            assert queue.heartbeat(session, "w1", [item_id], lease_token=old.lease_token) == []
        row = item(sessions, item_id)
        assert (row.status, row.lease_token) == (RetryStatus.PROCESSING, new.lease_token)
        with sessions.begin() as session:
            assert queue.complete(session, new)
        assert [h.status for h in history(sessions, item_id)] == ["lock_expired", "completed"]

    def test_stale_holder_with_the_same_worker_id_and_no_token_is_refused(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        item_id = enqueue(sessions, queue, retry_delay_seconds=0)
        (old,) = acquire(sessions, queue, "w1", lock_timeout=10)
        clock.advance(11)
        (new,) = acquire(sessions, queue, "w1", lock_timeout=10)  # the new owner, same id
        with sessions.begin() as session:
            for refused in (
                lambda: queue.complete(session, item_id, "w1"),
                lambda: queue.fail(session, item_id, "w1", "late"),
                lambda: queue.heartbeat(session, "w1", [item_id]),
                lambda: queue.release(session, "w1", [item_id]),
            ):
                with pytest.raises(InvalidArgument, match="lease_token"):
                    refused()
            assert not queue.complete(session, item_id, "w1", lease_token=old.lease_token)
            assert not queue.fail(session, item_id, "w1", "late", lease_token=old.lease_token)
            assert queue.release(session, "w1", [item_id], lease_token=old.lease_token) == []
        row = item(sessions, item_id)
        assert (row.status, row.lease_token) == (RetryStatus.PROCESSING, new.lease_token)
        with sessions.begin() as session:
            assert queue.complete(session, new)
        assert [h.status for h in history(sessions, item_id)] == ["lock_expired", "completed"]

    def test_operator_acts_by_id_only_with_force(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        done, failed, released = (enqueue(sessions, queue, max_retries=0) for _ in range(3))
        claimed = acquire(sessions, queue, "busy", batch_size=3)
        with sessions.begin() as session:
            assert queue.complete(session, done, "ops", force=True)
            assert queue.fail(session, failed, "ops", "by hand", retryable=False, force=True)
            assert queue.release(session, "ops", [released], force=True) == [released]
            assert not queue.complete(session, done, "ops", force=True)  # already completed
        assert [item(sessions, i).status for i in (done, failed, released)] == [
            RetryStatus.COMPLETED,
            RetryStatus.FAILED,
            RetryStatus.PENDING,
        ]
        assert [(h.status, h.worker_id) for h in history(sessions, done)] == [("completed", "ops")]
        with sessions.begin() as session:  # the worker that held them is refused now
            assert queue.complete_many(session, claimed) == set()
        with sessions.begin() as session, pytest.raises(InvalidArgument, match="force"):
            queue.complete(session, claimed[0], force=True)

    def test_mismatched_worker_for_a_claim_is_refused(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        enqueue(sessions, queue)
        (claimed,) = acquire(sessions, queue)
        with sessions.begin() as session, pytest.raises(InvalidArgument, match="worker_id"):
            queue.complete(session, claimed, "someone-else")

    def test_id_without_worker_is_refused(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        with sessions.begin() as session, pytest.raises(InvalidArgument, match="worker_id"):
            queue.complete(session, 1, lease_token=uuid.uuid4())


class TestHeartbeatAndRelease:
    """Heartbeats keep live locks; release hands unstarted items back."""

    def test_heartbeat_keeps_a_long_attempt(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        item_id = enqueue(sessions, queue)
        (claimed,) = acquire(sessions, queue, lock_timeout=10)
        for _ in range(5):  # 5 x 8 s = 4 x lock_timeout
            clock.advance(8)
            with sessions.begin() as session:
                held = queue.heartbeat(
                    session, "w1", lease_token=claimed.lease_token, lock_timeout=10
                )
            assert held == [item_id]
            assert acquire(sessions, queue, "thief", lock_timeout=10) == []
        with sessions.begin() as session:
            assert queue.complete(session, claimed)

    def test_release_returns_items_untouched(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        with sessions.begin() as session:
            queue.enqueue_many(session, [NewItem("e", {"i": i}) for i in range(3)])
        claimed = acquire(sessions, queue, batch_size=3)
        with sessions.begin() as session:
            released = queue.release(
                session, "w1", [claimed[0].id, claimed[1].id], lease_token=claimed[0].lease_token
            )
            assert queue.release(session, "other-worker", lease_token=uuid.uuid4()) == []
        assert released == sorted([claimed[0].id, claimed[1].id])
        for c in claimed[:2]:
            row = item(sessions, c.id)
            assert (row.status, row.retry_count, row.locked_by) == (RetryStatus.PENDING, 0, None)
            assert history(sessions, c.id) == []
        assert item(sessions, claimed[2].id).status is RetryStatus.PROCESSING
        assert {c.id for c in acquire(sessions, queue, "w2", batch_size=5)} == {
            claimed[0].id,
            claimed[1].id,
        }


class TestSchedule:
    """The next due time is reported on the queue's clock."""

    def test_seconds_until_due(self, sessions: sessionmaker[Session], queue: RetryQueue) -> None:
        with sessions() as session:
            assert queue.seconds_until_due(session) is None
        enqueue(sessions, queue, delay=45)
        with sessions() as session:
            assert queue.seconds_until_due(session) == 45

    def test_calculate_next_retry_is_the_documented_schedule(self) -> None:
        queue = RetryQueue()
        assert [queue.calculate_next_retry(n, 60, 2.0).total_seconds() for n in range(4)] == [
            60,
            120,
            240,
            480,
        ]


class TestLockExpiry:
    """A lock expires by its holder's lock_timeout (stored with the claim and extended by
    each heartbeat), never by the reclaiming worker's."""

    def test_a_short_timeout_worker_leaves_a_long_timeout_workers_items(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        long_item = enqueue(sessions, queue, retry_delay_seconds=0)
        (held,) = acquire(sessions, queue, "patient", lock_timeout=3600)
        assert item(sessions, long_item).lock_expires_at == clock.now() + timedelta(hours=1)
        short_item = enqueue(sessions, queue, retry_delay_seconds=0)
        clock.advance(120)
        (short,) = acquire(sessions, queue, "hasty", lock_timeout=60)  # looks for stale too
        assert short.id == short_item
        with sessions.begin() as session:
            assert queue.complete(session, short)
        assert item(sessions, long_item).lease_token == held.lease_token
        clock.advance(1080)  # 1200 s: the patient worker's heartbeat
        with sessions.begin() as session:
            kept = queue.heartbeat(
                session, "patient", lease_token=held.lease_token, lock_timeout=3600
            )
        assert kept == [long_item]
        assert item(sessions, long_item).lock_expires_at == clock.now() + timedelta(hours=1)
        clock.advance(2500)  # 3700 s after the claim, 2500 s after the heartbeat
        assert acquire(sessions, queue, "hasty", lock_timeout=60) == []
        assert item(sessions, long_item).lease_token == held.lease_token
        clock.advance(1101)  # past the heartbeat's expiry: now it is stale for everyone
        (again,) = acquire(sessions, queue, "hasty", lock_timeout=60)
        assert again.id == long_item
        assert [h.status for h in history(sessions, long_item)] == ["lock_expired"]
        with sessions.begin() as session:
            assert not queue.complete(session, held)

    def test_locks_without_a_stored_expiry_use_the_reclaimers_timeout(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        item_id = enqueue(sessions, queue, retry_delay_seconds=0)
        acquire(sessions, queue, "legacy", lock_timeout=3600)
        with sessions.begin() as session:  # as if locked before revision rq0006
            session.execute(
                update(RetryItem).where(RetryItem.id == item_id).values(lock_expires_at=None)
            )
        clock.advance(61)
        (again,) = acquire(sessions, queue, "hasty", lock_timeout=60)
        assert again.id == item_id
        assert [h.status for h in history(sessions, item_id)] == ["lock_expired"]
