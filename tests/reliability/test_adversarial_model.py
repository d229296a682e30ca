"""Adversarial, property-based: producers, workers, maintenance and operators interleaved.

A hypothesis state machine drives one queue through random sequences of enqueues (single
and bulk, with event_ids reused across and within calls), claims by two workers, outcomes
(complete, fail, heartbeat, release) from current and stale holders, time jumps that expire
leases and age items past the retention, cleanup, replay (requeue, completed items too),
key rotation with encryption on, and, on a partitioned PostgreSQL table, partition
maintenance (creating months, which rescues rows from the default partition, and dropping
months past the retention). It runs on PostgreSQL (plain and partitioned) and MariaDB.

Unlike tests/reliability/test_lifecycle_model.py it keeps no model of each item: it checks,
after every step, the guarantees a user relies on, whatever the sequence:

* every acknowledged item exists, or was removed by cleanup or a partition drop after
  reaching a terminal status recorded in its history;
* an item is completed at most once per run (between two replays);
* history rows equal attempts (since the last replay: retry_count, plus one if terminal);
* every payload reads back as it was enqueued (rotation never loses or mixes data);
* enqueue is idempotent: an event_id held by a row returns that row, created=False;
* nothing raises anything but a :class:`~retryqueue.RetryQueueError` (and, sequential as
  these steps are, nothing raises at all).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, delete, select, text
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import (
    ClaimedItem,
    ItemFilter,
    ManualClock,
    NewItem,
    RetryQueue,
    RetryQueueError,
    RetryStatus,
    create_engine,
    encryption,
    migrations,
)
from retryqueue.migrations import partitioning
from retryqueue.models import RetryHistory, RetryItem
from tests.mysql.server import MysqlServer
from tests.support.servers import PostgresServer

pytestmark = pytest.mark.reliability

START = datetime(2026, 3, 28, 12, tzinfo=UTC)  # a few days before a month boundary
LOCK_TIMEOUT = 60
RETENTION_DAYS = 1
ATTEMPTS = ("completed", "retry_scheduled", "dead_lettered", "failed", "lock_expired")
TERMINAL = {RetryStatus.COMPLETED, RetryStatus.FAILED, RetryStatus.DEAD_LETTER}
TERMINAL_RECORDS = {"completed", "failed", "dead_lettered", "lock_expired", "expired"}
YEAR = timedelta(days=365)
OUTCOMES = ["complete", "bulk", "retry", "final", "leave"]
EVENT_POOL = [uuid.UUID(int=n + 1) for n in range(4)]  # reused event_ids: duplicates
T = TypeVar("T")


class AdversarialMachine(RuleBasedStateMachine):
    """Drives a real queue; checks the user-visible guarantees after every step."""

    engine: ClassVar[Engine]
    partitioned: ClassVar[bool] = False
    errors: ClassVar[Counter[str]] = Counter()
    effects: ClassVar[Counter[str]] = Counter()  # what the steps did: the run's coverage

    claims = Bundle("claims")

    def __init__(self) -> None:
        super().__init__()
        with self.engine.begin() as connection:
            connection.execute(delete(RetryHistory))
            connection.execute(delete(RetryItem))
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.clock = ManualClock(START)
        self.queue = RetryQueue(clock=self.clock)
        self.keys = [encryption.generate_key()]
        encryption.configure(self.keys)
        self.payloads: dict[int, dict[str, int]] = {}  # acknowledged id -> payload
        self.removed: set[int] = set()  # acknowledged, then removed after a terminal record
        self.trimmed: set[int] = set()  # history may have been cut by its own retention
        self.sequence = 0

    def teardown(self) -> None:
        encryption.configure(None)

    # -- helpers -------------------------------------------------------------------------

    def _call(self, what: str, action: Callable[[], T]) -> T | None:
        """Run one step; a RetryQueueError is counted (and fails the test at the end)."""
        try:
            return action()
        except RetryQueueError as exc:
            type(self).errors[f"{what}: {type(exc).__name__}: {exc}"] += 1
            return None

    @staticmethod
    def _recorded(session: Session) -> dict[int, set[str]]:
        found: dict[int, set[str]] = {}
        rows = session.execute(select(RetryHistory.retry_queue_id, RetryHistory.status))
        for item_id, status in rows:
            found.setdefault(item_id, set()).add(status)
        return found

    def _note(self, effect: str, count: int = 1) -> None:
        type(self).effects[effect] += count

    def _payload(self) -> dict[str, int]:
        self.sequence += 1
        return {"n": self.sequence}

    def _holders(self, session: Session) -> dict[uuid.UUID, int]:
        rows = session.execute(select(RetryItem.event_id, RetryItem.id))
        return {row.event_id: row.id for row in rows}

    def _acknowledge(self, new: list[NewItem], made: list[Any], before: dict[Any, int]) -> None:
        first: dict[uuid.UUID, int] = {}
        for item, result in zip(new, made, strict=True):
            event_id = result.event_id
            if event_id in before:  # held already: that row, nothing created
                assert (result.id, result.created) == (before[event_id], False)
            elif event_id in first:  # repeated within the call: the first mention's row
                assert (result.id, result.created) == (first[event_id], False)
            else:
                assert result.created
                first[event_id] = result.id
                self.payloads[result.id] = dict(item.event_data)

    def _enqueue(self, new: list[NewItem]) -> None:
        def run() -> None:
            with self.sessions.begin() as session:
                before = self._holders(session)
                made = self.queue.enqueue_many(session, new)
            self._acknowledge(new, made, before)

        self._call("enqueue", run)

    def _removing(self, what: str, action: Callable[[Session], object]) -> None:
        """Run a step that may delete items: only terminal, recorded ones may go."""

        def run() -> None:
            with self.sessions() as session:
                before = {
                    row.id: (row.status, row.expires_at)
                    for row in session.execute(
                        select(RetryItem.id, RetryItem.status, RetryItem.expires_at)
                    )
                }
                recorded = self._recorded(session)  # before: history has its own retention
                session.rollback()
                action(session)
                session.commit()
                after = set(session.scalars(select(RetryItem.id)))
                archived = self._recorded(session)
                for item_id in set(before) - after:
                    status, expires_at = before[item_id]
                    if status in TERMINAL:  # its own row recorded it; its history may be
                        # gone already (history retention 2 days; a partitioned table keeps
                        # rows until their month goes), else it holds the terminal outcome
                        outcomes = recorded.get(item_id)
                        assert outcomes is None or TERMINAL_RECORDS & outcomes, (what, item_id)
                    else:  # unrun past its expiry: archived with an "expired" record
                        # (what expiry may do is i14's point 5, owned elsewhere)
                        assert expires_at <= self.clock.now(), (what, item_id, status)
                        assert "expired" in archived.get(item_id, set()), (what, item_id)
                    self.removed.add(item_id)
                    self._note(f"removed by {what}")
                history_cutoff = self.clock.now() - timedelta(days=2 * RETENTION_DAYS)
                for row in session.execute(select(RetryItem.id, RetryItem.created_at)):
                    if row.created_at < history_cutoff:
                        self.trimmed.add(row.id)

        self._call(what, run)

    # -- producers ---------------------------------------------------------------------

    @rule(reuse=st.sampled_from([None, *EVENT_POOL]), max_retries=st.integers(0, 2))
    def enqueue(self, reuse: uuid.UUID | None, max_retries: int) -> None:
        self._enqueue(
            [
                NewItem(
                    "e",
                    self._payload(),
                    event_id=reuse,
                    max_retries=max_retries,
                    retry_delay_seconds=10,
                    plugin_name="Pay" if self.sequence % 2 else "pay",
                    ttl=timedelta(days=365),
                )
            ]
        )

    @rule(event_ids=st.lists(st.sampled_from([None, *EVENT_POOL]), min_size=1, max_size=4))
    def enqueue_many(self, event_ids: list[uuid.UUID | None]) -> None:
        self._enqueue(
            [
                NewItem("e", self._payload(), event_id=e, max_retries=1, ttl=timedelta(days=365))
                for e in event_ids
            ]
        )

    # -- workers -------------------------------------------------------------------------

    @initialize()
    def a_few_items(self) -> None:
        self._enqueue([NewItem("e", self._payload(), max_retries=1, ttl=YEAR) for _ in range(3)])

    @rule(
        target=claims,
        worker=st.sampled_from(["w1", "w2"]),
        plan=st.lists(st.sampled_from(OUTCOMES), min_size=1, max_size=3),
    )
    def work(self, worker: str, plan: list[str]) -> list[ClaimedItem]:
        """A worker round: claim, then give each item the planned outcome (or none)."""

        def run() -> list[ClaimedItem]:
            with self.sessions.begin() as session:
                return self.queue.acquire(session, worker, len(plan), lock_timeout=LOCK_TIMEOUT)

        claimed = self._call("acquire", run) or []
        self._note("claimed", len(claimed))
        for item in claimed:
            assert dict(item.event_data) == self.payloads[item.id]
        bulk = [item for item, outcome in zip(claimed, plan, strict=False) if outcome == "bulk"]
        if bulk:  # one of them passed twice: still one completion, one history row
            done = self._call(
                "complete_many",
                lambda: self._in_transaction(
                    lambda s: self.queue.complete_many(s, [*bulk, bulk[0]])
                ),
            )
            self._note("completed in bulk", len(done or ()))
        for item, outcome in zip(claimed, plan, strict=False):
            if outcome == "complete":
                self._complete(item)
            elif outcome in ("retry", "final"):
                self._fail(item, retryable=outcome == "retry")
        return claimed  # "leave": still processing, a crashed or slow holder

    def _complete(self, claim: ClaimedItem) -> None:
        done = self._call(
            "complete", lambda: self._in_transaction(lambda s: self.queue.complete(s, claim))
        )
        self._note("completed" if done else "stale complete refused")

    def _fail(self, claim: ClaimedItem, *, retryable: bool) -> None:
        done = self._call(
            "fail",
            lambda: self._in_transaction(
                lambda s: self.queue.fail(s, claim, error_message="no", retryable=retryable)
            ),
        )
        self._note("failed" if done else "stale fail refused")

    @rule(claims=claims, index=st.integers(0, 2))
    def complete(self, claims: list[ClaimedItem], index: int) -> None:
        """An outcome from whoever holds this (possibly old) claim."""
        if claims:
            self._complete(claims[index % len(claims)])

    @rule(claims=claims)
    def complete_many(self, claims: list[ClaimedItem]) -> None:
        """Old leases of one worker in bulk, with its current one when it has it."""
        if claims:
            batch = [*claims, claims[0]]
            done = self._call(
                "complete_many",
                lambda: self._in_transaction(lambda s: self.queue.complete_many(s, batch)),
            )
            self._note("completed in bulk", len(done or ()))

    @rule(claims=claims, index=st.integers(0, 2), retryable=st.booleans())
    def fail(self, claims: list[ClaimedItem], index: int, retryable: bool) -> None:
        if claims:
            self._fail(claims[index % len(claims)], retryable=retryable)

    @rule(claims=claims)
    def heartbeat(self, claims: list[ClaimedItem]) -> None:
        """A heartbeat for this (possibly old) lease: extends it only while it holds."""
        if claims:
            lease = claims[0]
            self._call(
                "heartbeat",
                lambda: self._in_transaction(
                    lambda s: self.queue.heartbeat(
                        s, str(lease.locked_by), lease_token=lease.lease_token
                    )
                ),
            )

    @rule(claims=claims)
    def release(self, claims: list[ClaimedItem]) -> None:
        """Give this (possibly old) lease's items back: only while it holds them."""
        if claims:
            lease = claims[0]
            self._call(
                "release",
                lambda: self._in_transaction(
                    lambda s: self.queue.release(
                        s, str(lease.locked_by), lease_token=lease.lease_token
                    )
                ),
            )

    def _in_transaction(self, action: Callable[[Session], T]) -> T:
        with self.sessions.begin() as session:
            return action(session)

    @rule(seconds=st.sampled_from([1, 30, 61, 300, 86400 + 1, 3 * 86400, 10 * 86400]))
    def time_passes(self, seconds: int) -> None:
        self.clock.advance(seconds)

    # -- operators and maintenance ---------------------------------------------------------

    @rule()
    def cleanup_a_day_later(self) -> None:
        self.clock.advance(timedelta(days=RETENTION_DAYS, seconds=1))
        self._removing(
            "cleanup",
            lambda session: [
                session.commit()
                for _ in self.queue.iter_cleanup(session, retention_days=RETENTION_DAYS)
            ],
        )

    @rule(completed_too=st.booleans())
    def replay(self, completed_too: bool) -> None:
        statuses = (
            tuple(TERMINAL) if completed_too else (RetryStatus.FAILED, RetryStatus.DEAD_LETTER)
        )
        moved = self._call(
            "requeue",
            lambda: self._in_transaction(
                lambda s: self.queue.requeue(s, ItemFilter(statuses=statuses), requested_by="ops")
            ),
        )
        self._note("replayed", len(moved or ()))

    @rule()
    def rotate_keys(self) -> None:
        self.keys.insert(0, encryption.generate_key())
        encryption.configure(self.keys)

        def run() -> int:
            rewritten = 0
            with self.sessions() as session:
                for count in self.queue.iter_rotate_keys(session, batch_size=3):
                    session.commit()
                    rewritten += count
            return rewritten

        self._note("rotated", self._call("rotate_keys", run) or 0)

    @precondition(lambda self: self.partitioned)
    @rule(months_ahead=st.integers(0, 1))
    def create_partitions(self, months_ahead: int) -> None:
        def run() -> int:
            with self.engine.begin() as connection:
                default = "SELECT count(*) FROM daz_retry_queue_default"
                stranded = connection.execute(text(default)).scalar_one()
                partitioning.create_partitions(
                    connection, months_ahead=months_ahead, now=self.clock.now()
                )
                return int(stranded - connection.execute(text(default)).scalar_one())

        self._note("rescued from the default partition", self._call("create_partitions", run) or 0)

    @precondition(lambda self: self.partitioned)
    @rule()
    def drop_partitions(self) -> None:
        def drop(session: Session) -> None:
            with self.engine.connect() as connection:  # committed month by month, as the CLI
                for _ in partitioning.iter_drop_partitions(
                    connection, RETENTION_DAYS * 86400, now=self.clock.now()
                ):
                    connection.commit()

        self._removing("drop_partitions", drop)

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def guarantees_hold(self) -> None:
        with self.sessions() as session:
            rows = {row.id: row for row in session.scalars(select(RetryItem))}
            history: dict[int, list[str]] = {}
            for item_id, status in session.execute(
                select(RetryHistory.retry_queue_id, RetryHistory.status).order_by(RetryHistory.id)
            ):
                history.setdefault(item_id, []).append(status)
            holders = Counter(row.event_id for row in rows.values())
        # Every acknowledged item exists, or went after a terminal, recorded outcome.
        lost = set(self.payloads) - set(rows) - self.removed
        assert not lost, f"acknowledged items lost: {sorted(lost)}"
        assert set(rows) <= set(self.payloads), "rows nobody enqueued"
        assert max(holders.values(), default=1) == 1, "one event_id, two rows"
        for item_id, row in rows.items():
            assert row.event_data == self.payloads[item_id]  # rotation kept every payload
            if item_id in self.trimmed:
                continue
            runs = history.get(item_id, [])
            since = runs[len(runs) - runs[::-1].index("requeued") :] if "requeued" in runs else runs
            assert since.count("completed") <= 1, (item_id, runs)
            attempts = sum(1 for status in since if status in ATTEMPTS)
            # An item that expired unrun is a dead letter with an "expired" record and no
            # attempt; any other terminal state was reached by one more attempt.
            unrun = bool(since) and since[-1] == "expired"
            expected = row.retry_count + (1 if row.status in TERMINAL and not unrun else 0)
            assert attempts == expected, (item_id, row.status, row.retry_count, runs)
            if row.status is RetryStatus.PROCESSING:
                assert row.locked_by and row.lease_token
            else:
                assert row.locked_by is None and row.lease_token is None


@pytest.fixture(params=["postgresql", "postgresql-partitioned", "mysql"])
def adversarial_engine(request: pytest.FixtureRequest) -> Iterator[tuple[Engine, bool]]:
    """A fresh database at head of each kind; partitioned for the second parameter."""
    kind = str(request.param)
    server: PostgresServer | MysqlServer = request.getfixturevalue(
        "mysql_server" if kind == "mysql" else "pg_server"
    )
    url = server.create_database("rq_adversarial")
    engine = create_engine(url, pool_size=4)
    try:
        migrations.upgrade(engine)
        if kind == "postgresql-partitioned":
            migrations.enable_partitioning(engine, months_ahead=0, now=START)
        yield engine, kind == "postgresql-partitioned"
    finally:
        engine.dispose()
        server.drop_database(url)


def test_guarantees_hold_under_adversarial_sequences(
    adversarial_engine: tuple[Engine, bool],
) -> None:
    engine, partitioned = adversarial_engine
    AdversarialMachine.engine = engine
    AdversarialMachine.partitioned = partitioned
    AdversarialMachine.errors = Counter()
    AdversarialMachine.effects = Counter()
    try:
        run_state_machine_as_test(
            AdversarialMachine,
            settings=settings(
                max_examples=25,
                stateful_step_count=50,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )
    finally:
        encryption.configure(None)
    assert not AdversarialMachine.errors, dict(AdversarialMachine.errors)
    # The run exercised at least the core: claims and outcomes.
    assert AdversarialMachine.effects["claimed"], dict(AdversarialMachine.effects)
