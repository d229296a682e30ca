"""Property-based: a hypothesis state machine against a simple model of the lifecycle.

Random sequences of enqueue / acquire / complete / fail / heartbeat / lock expiry (the
clock jumping) / requeue / cleanup run on SQLite and PostgreSQL. After every step the
database must agree with the model item by item, and the invariants must hold: one owner
per processing item, retry_count never above max_retries, terminal states stay terminal
unless replayed, history rows equal attempts.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import sessionmaker

from retryqueue import ClaimedItem, ItemFilter, ManualClock, RetryQueue, RetryStatus
from retryqueue.models import RetryHistory, RetryItem

pytestmark = pytest.mark.reliability

LOCK_TIMEOUT = 60
DELAY = 10  # retry_delay_seconds of every item; multiplier 2
ATTEMPT_STATUSES = ("completed", "retry_scheduled", "dead_lettered", "failed", "lock_expired")
TERMINAL = {"completed", "failed", "dead_letter"}


@dataclass
class Model:
    """What the queue should hold for one item."""

    max_retries: int
    due: datetime
    status: str = "pending"
    retry_count: int = 0
    owner: str | None = None
    token: Any = None
    locked_at: datetime | None = None
    finished_at: datetime | None = None
    history: list[tuple[str, datetime]] = field(default_factory=list)

    def record(self, status: str, at: datetime) -> None:
        self.history.append((status, at))

    def count(self, *statuses: str) -> int:
        return sum(1 for status, _ in self.history if status in statuses)


class QueueMachine(RuleBasedStateMachine):
    """Drives the real queue and a model side by side."""

    engine: Engine  # set by the test before the machine runs

    claims = Bundle("claims")

    def __init__(self) -> None:
        super().__init__()
        with self.engine.begin() as connection:
            connection.execute(delete(RetryHistory))
            connection.execute(delete(RetryItem))
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.clock = ManualClock(datetime(2026, 3, 1, tzinfo=UTC))
        self.queue = RetryQueue(clock=self.clock)
        self.items: dict[int, Model] = {}

    # -- model helpers ---------------------------------------------------------------

    def _fail_model(self, model: Model, *, retryable: bool, history: str | None = None) -> None:
        now = self.clock.now()
        model.owner = model.token = model.locked_at = None
        if not retryable:
            model.status = "failed"
            model.record("failed", now)
            model.finished_at = now
        elif model.retry_count >= model.max_retries:
            model.status = "dead_letter"
            model.record(history or "dead_lettered", now)
            model.finished_at = now
        else:
            model.due = now + timedelta(seconds=DELAY * 2**model.retry_count)
            model.retry_count += 1
            model.status = "pending"
            model.record(history or "retry_scheduled", now)

    def _reclaim_model(self) -> None:
        stale_before = self.clock.now() - timedelta(seconds=LOCK_TIMEOUT)
        for model in self.items.values():
            locked_at = model.locked_at
            if model.status == "processing" and locked_at is not None and locked_at < stale_before:
                self._fail_model(model, retryable=True, history="lock_expired")

    # -- rules -------------------------------------------------------------------------

    @rule(max_retries=st.integers(0, 2), delay=st.sampled_from([0, 0, 30]))
    def enqueue(self, max_retries: int, delay: int) -> None:
        with self.sessions.begin() as session:
            result = self.queue.enqueue(
                session,
                "e",
                {},
                max_retries=max_retries,
                retry_delay_seconds=DELAY,
                delay=delay,
                ttl=timedelta(days=365),
            )
        self.items[result.id] = Model(max_retries, self.clock.now() + timedelta(seconds=delay))

    @rule(target=claims, worker=st.sampled_from(["w1", "w2"]), batch=st.integers(1, 3))
    def acquire(self, worker: str, batch: int) -> list[ClaimedItem]:
        self._reclaim_model()
        now = self.clock.now()
        due = sorted(
            (m.due, item_id)
            for item_id, m in self.items.items()
            if m.status == "pending" and m.due <= now
        )
        expected = [item_id for _, item_id in due[:batch]]
        with self.sessions.begin() as session:
            claimed = self.queue.acquire(session, worker, batch, lock_timeout=LOCK_TIMEOUT)
        assert [c.id for c in claimed] == expected
        for c in claimed:
            model = self.items[c.id]
            model.status, model.owner, model.token, model.locked_at = (
                "processing",
                worker,
                c.lease_token,
                now,
            )
            assert c.attempt == model.retry_count + 1
        return claimed

    @rule(claims=claims, index=st.integers(0, 2))
    def complete(self, claims: list[ClaimedItem], index: int) -> None:
        if not claims:
            return
        claim = claims[index % len(claims)]
        model = self.items.get(claim.id)
        holds = (
            model is not None and model.status == "processing" and model.token == claim.lease_token
        )
        with self.sessions.begin() as session:
            assert self.queue.complete(session, claim) is holds
        if holds and model is not None:
            model.status, model.finished_at = "completed", self.clock.now()
            model.owner = model.token = model.locked_at = None
            model.record("completed", self.clock.now())

    @rule(claims=claims, index=st.integers(0, 2), retryable=st.booleans())
    def fail(self, claims: list[ClaimedItem], index: int, retryable: bool) -> None:
        if not claims:
            return
        claim = claims[index % len(claims)]
        model = self.items.get(claim.id)
        holds = (
            model is not None and model.status == "processing" and model.token == claim.lease_token
        )
        with self.sessions.begin() as session:
            assert self.queue.fail(session, claim, error_message="x", retryable=retryable) is holds
        if holds and model is not None:
            self._fail_model(model, retryable=retryable)

    @rule(claims=claims)
    def heartbeat(self, claims: list[ClaimedItem]) -> None:
        if not claims:
            return
        lease = claims[0].lease_token  # one acquisition, one lease
        with self.sessions.begin() as session:
            held = self.queue.heartbeat(
                session, claims[0].locked_by, lease_token=lease, lock_timeout=LOCK_TIMEOUT
            )
        expected = sorted(
            i for i, m in self.items.items() if m.status == "processing" and m.token == lease
        )
        assert held == expected
        for item_id in held:
            self.items[item_id].locked_at = self.clock.now()

    @rule(seconds=st.sampled_from([1, 15, 31, 61, 200]))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule()
    def requeue_finished(self) -> None:
        with self.sessions.begin() as session:
            moved = self.queue.requeue(session, ItemFilter(), requested_by="ops")
        expected = sorted(i for i, m in self.items.items() if m.status in ("dead_letter", "failed"))
        assert moved == expected
        for item_id in moved:
            model = self.items[item_id]
            model.status, model.retry_count, model.due = "pending", 0, self.clock.now()
            model.finished_at = None
            model.record("requeued", self.clock.now())

    @rule()
    def cleanup_a_day_later(self) -> None:
        self.clock.advance(timedelta(days=1, seconds=1))
        with self.sessions.begin() as session:
            result = self.queue.cleanup(session, retention_days=1)
        cutoff = self.clock.now() - timedelta(days=1)
        gone = [
            i
            for i, m in self.items.items()
            if m.status in TERMINAL and m.finished_at is not None and m.finished_at < cutoff
        ]
        assert result.deleted_count == len(gone)
        for item_id in gone:
            del self.items[item_id]
        history_cutoff = self.clock.now() - timedelta(days=2)  # history: twice the retention
        for model in self.items.values():
            model.history = [(s, at) for s, at in model.history if at >= history_cutoff]

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def database_agrees_with_the_model(self) -> None:
        with self.sessions() as session:
            rows = {r.id: r for r in session.scalars(select(RetryItem))}
            history = Counter(
                (h.retry_queue_id, h.status) for h in session.scalars(select(RetryHistory))
            )
        assert set(rows) == set(self.items)
        for item_id, row in rows.items():
            model = self.items[item_id]
            assert row.status.value == model.status
            assert row.retry_count == model.retry_count <= row.max_retries
            if row.status is RetryStatus.PROCESSING:
                assert row.locked_by == model.owner and row.lease_token == model.token
            else:
                assert row.locked_by is None and row.lease_token is None
            if row.status is RetryStatus.PENDING:
                assert row.next_retry_at == model.due
            attempts = sum(history[(item_id, s)] for s in ATTEMPT_STATUSES)
            assert attempts == model.count(*ATTEMPT_STATUSES)
            assert history[(item_id, "requeued")] == model.count("requeued")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_queue_lifecycle_matches_the_model(engine: Engine) -> None:
    QueueMachine.engine = engine
    run_state_machine_as_test(
        QueueMachine,
        settings=settings(
            max_examples=int(os.environ.get("RETRYQUEUE_MODEL_EXAMPLES", "25")),
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
