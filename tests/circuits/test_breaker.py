"""The circuit breaker on every backend: opening, skipping, the single probe, the audit trail."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import (
    CircuitBreaker,
    CircuitState,
    CircuitStatus,
    InvalidArgument,
    ManualClock,
    RetryQueue,
)
from retryqueue.circuits import circuit_events
from retryqueue.models import RetryCircuit

CLOSED, OPEN, HALF_OPEN = CircuitStatus.CLOSED, CircuitStatus.OPEN, CircuitStatus.HALF_OPEN
Outcomes = list[tuple[str | None, str | None, bool]]


def failures(count: int, plugin: str | None = "pay", event_type: str = "capture") -> Outcomes:
    return [(plugin, event_type, False)] * count


def state_of(sessions: sessionmaker[Session], key: str) -> CircuitState:
    with sessions() as session:
        (found,) = [state for state in CircuitBreaker().states(session) if state.key == key]
        return found


def trail(sessions: sessionmaker[Session]) -> list[tuple[str, str, str, str]]:
    """The audit trail, oldest first: (key, from, to, reason)."""
    with sessions() as session:
        rows = circuit_events(session)
    return [(e.key, e.from_status.value, e.to_status.value, e.reason) for e in reversed(rows)]


def open_and_cool_down(
    breaker: CircuitBreaker, sessions: sessionmaker[Session], clock: ManualClock
) -> None:
    with sessions.begin() as session:
        breaker.record(session, failures(3))
    clock.advance(30)


def held_then_probed(
    breaker: CircuitBreaker,
    sessions: sessionmaker[Session],
    clock: ManualClock,
    *,
    gates: int,
    every: float,
    then: float,
    each: Callable[[Session], None] | None = None,
) -> None:
    """``gates`` gates, ``every`` seconds apart, start no probe for the open key "pay" (no
    transition, no audit row; ``each`` checks more in each gate's session); ``then``
    seconds after the last one, the next gate does."""
    for _ in range(gates):
        with sessions.begin() as session:
            gate = breaker.gate(session, owner="w")
            if each is not None:
                each(session)
        assert gate.probes == () and gate.blocked == {"pay"} and gate.transitions == ()
        clock.advance(every)
    assert [row[2] for row in trail(sessions)] == ["open"]
    assert state_of(sessions, "pay").status is OPEN
    clock.advance(then)
    with sessions.begin() as session:
        assert breaker.gate(session, owner="w").probes == ("pay",)
    assert [row[2] for row in trail(sessions)] == ["open", "half_open"]


class TestOpening:
    """Consecutive failures or a failure rate open a key's circuit; others are untouched."""

    def test_opens_after_n_consecutive_failures(
        self, breaker: CircuitBreaker, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        with sessions.begin() as session:
            assert breaker.record(session, failures(2)) == []
            assert breaker.record(session, [("pay", "capture", True)]) == []
            assert breaker.record(session, failures(2) + failures(5, plugin="mail")) != []
        with sessions.begin() as session:
            assert breaker.gate(session).blocked == {"mail"}
            (opened,) = breaker.record(session, failures(1))
        assert (opened.key, opened.from_status, opened.to_status) == ("pay", CLOSED, OPEN)
        assert opened.reason == "consecutive_failures" and opened.cooldown_seconds == 30
        assert opened.at == clock.now() and opened.open_until == clock.now() + timedelta(seconds=30)
        pay = state_of(sessions, "pay")
        assert pay.status is OPEN and pay.open_until == clock.now() + timedelta(seconds=30)
        assert trail(sessions) == [
            ("mail", "closed", "open", "consecutive_failures"),
            ("pay", "closed", "open", "consecutive_failures"),
        ]

    def test_opens_on_the_failure_rate_within_the_window(
        self, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        breaker = CircuitBreaker(
            failure_threshold=100, failure_rate=0.5, window=60, min_attempts=4, clock=clock
        )
        ok, bad = ("pay", "capture", True), ("pay", "capture", False)
        with sessions.begin() as session:
            assert breaker.record(session, [ok, bad, bad]) == []
        clock.advance(200)  # those three are forgotten
        with sessions.begin() as session:
            assert breaker.record(session, [bad, ok, ok]) == []
        clock.advance(10)
        with sessions.begin() as session:
            (opened,) = breaker.record(session, [bad])
        assert opened.reason == "failure_rate"
        assert state_of(sessions, "pay").status is OPEN

    def test_successes_on_healthy_circuits_write_nothing(
        self, breaker: CircuitBreaker, sessions: sessionmaker[Session]
    ) -> None:
        with sessions.begin() as session:
            assert breaker.record(session, [("pay", "capture", True)] * 5) == []
            assert session.scalars(select(RetryCircuit.circuit_key)).all() == []
            breaker.record(session, [("mail", "send", True), *failures(1)])
            assert session.scalars(select(RetryCircuit.circuit_key)).all() == ["pay"]
            breaker.record(session, [("pay", "capture", True)])  # forgets the failure
            assert breaker.states(session)[0].consecutive_failures == 0

    def test_items_without_a_plugin_have_no_circuit(
        self, breaker: CircuitBreaker, sessions: sessionmaker[Session]
    ) -> None:
        with sessions.begin() as session:
            assert breaker.record(session, failures(10, plugin=None)) == []
            assert breaker.states(session) == []

    def test_per_event_type_keys(self, sessions: sessionmaker[Session], clock: ManualClock) -> None:
        breaker = CircuitBreaker(failure_threshold=2, per_event_type=True, clock=clock)
        with sessions.begin() as session:
            (opened,) = breaker.record(session, failures(2) + failures(1, event_type="refund"))
            gate = breaker.gate(session)
        assert opened.key == "pay:capture"
        assert gate.blocked == {"pay:capture"} and gate.per_event_type

    def test_database_clock(self, sessions: sessionmaker[Session], backend: str) -> None:
        # The server clock on PostgreSQL and MariaDB, the host clock on SQLite.
        breaker = CircuitBreaker(failure_threshold=1, cooldown=3600, max_cooldown=3600)
        with sessions.begin() as session:
            (opened,) = breaker.record(session, failures(1))
            gate = breaker.gate(session)
        assert opened.open_until is not None
        assert opened.open_until - opened.at == timedelta(hours=1)
        assert gate.blocked == {"pay"} and gate.probes == ()


@pytest.fixture
def pay_item(sessions: sessionmaker[Session], queue: RetryQueue) -> int:
    """A due item of the ``pay`` circuit: the work a probe needs before it starts."""
    with sessions.begin() as session:
        return queue.enqueue(session, "capture", {}, plugin_name="pay").id


@pytest.mark.usefixtures("pay_item")
class TestGate:
    """The gate is cheap when all is well and hands each probe to exactly one caller."""

    def test_one_select_when_no_circuit_is_open(
        self, breaker: CircuitBreaker, engine: Engine, sessions: sessionmaker[Session]
    ) -> None:
        statements: list[str] = []

        def count(*args: object) -> None:
            statements.append(str(args[2]))

        event.listen(engine, "before_cursor_execute", count)
        try:
            with sessions.begin() as session:
                gate = breaker.gate(session)
        finally:
            event.remove(engine, "before_cursor_execute", count)
        assert gate.blocked == frozenset() and gate.probes == ()
        assert len([s for s in statements if "daz_retry_circuits" in s]) == 1

    def test_blocked_until_the_cooldown_ends(
        self, breaker: CircuitBreaker, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        with sessions.begin() as session:
            breaker.record(session, failures(3))
        clock.advance(29.9)
        with sessions.begin() as session:
            assert breaker.gate(session).probes == ()
        clock.advance(0.1)
        with sessions.begin() as session:
            gate = breaker.gate(session, owner="worker-1")
        assert gate.probes == ("pay",) and gate.blocked == {"pay"}
        (started,) = gate.transitions
        assert (started.from_status, started.to_status, started.reason) == (
            OPEN,
            HALF_OPEN,
            "probe",
        )
        probing = state_of(sessions, "pay")
        assert probing.status is HALF_OPEN and probing.probe_owner == "worker-1"
        assert trail(sessions)[-1] == ("pay", "open", "half_open", "probe")

    def test_two_competing_sessions_one_probe(
        self,
        breaker: CircuitBreaker,
        sessions: sessionmaker[Session],
        clock: ManualClock,
        backend: str,
    ) -> None:
        open_and_cool_down(breaker, sessions, clock)
        first = sessions()
        first.begin()
        try:
            won = breaker.gate(first, owner="first")
            if backend == "sqlite":  # one writer at a time: the second waits for the commit
                first.commit()
            with sessions.begin() as second:  # PostgreSQL/MariaDB: while first holds the row
                lost = breaker.gate(second, owner="second")
            first.commit()
        finally:
            first.close()
        assert won.probes == ("pay",)
        assert lost.probes == () and lost.blocked == {"pay"}
        with sessions.begin() as third:
            assert breaker.gate(third, owner="third").probes == ()
        assert state_of(sessions, "pay").probe_owner == "first"

    def test_a_silent_probe_is_handed_out_again_after_its_timeout(
        self, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        breaker = CircuitBreaker(failure_threshold=1, cooldown=30, probe_timeout=60, clock=clock)
        with sessions.begin() as session:
            breaker.record(session, failures(1))
        clock.advance(30)
        with sessions.begin() as session:
            assert breaker.gate(session, owner="crashed").probes == ("pay",)
        clock.advance(59)
        with sessions.begin() as session:
            assert breaker.gate(session, owner="other").probes == ()
        clock.advance(1)
        with sessions.begin() as session:
            gate = breaker.gate(session, owner="other")
        assert gate.probes == ("pay",) and gate.transitions[0].reason == "probe_timed_out"

    def test_release_probe_makes_it_due_again(
        self, breaker: CircuitBreaker, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        open_and_cool_down(breaker, sessions, clock)
        with sessions.begin() as session:
            assert breaker.gate(session).probes == ("pay",)
            released = breaker.release_probe(session, "pay")
        assert released.status is OPEN and released.open_until == clock.now()
        with sessions.begin() as session:
            assert breaker.gate(session).probes == ("pay",)
        assert [row[3] for row in trail(sessions)] == ["consecutive_failures", "probe", "probe"]


@pytest.mark.usefixtures("pay_item")
class TestProbeOutcome:
    """The probe's success closes the circuit; its failure reopens it for longer."""

    def test_success_closes(
        self, breaker: CircuitBreaker, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        open_and_cool_down(breaker, sessions, clock)
        with sessions.begin() as session:
            breaker.gate(session)
            (closed,) = breaker.record(session, [("pay", "capture", True)])
            assert breaker.gate(session).blocked == frozenset()
        assert (closed.from_status, closed.to_status, closed.reason) == (
            HALF_OPEN,
            CLOSED,
            "probe_succeeded",
        )
        pay = state_of(sessions, "pay")
        assert pay.status is CLOSED and pay.cooldown_seconds == 0 and pay.probe_owner is None

    def test_failure_reopens_with_a_doubled_capped_cooldown(
        self, breaker: CircuitBreaker, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        open_and_cool_down(breaker, sessions, clock)
        cooldowns = []
        for _ in range(3):
            with sessions.begin() as session:
                assert breaker.gate(session).probes == ("pay",)
                (reopened,) = breaker.record(session, failures(1))
            assert reopened.reason == "probe_failed" and reopened.to_status is OPEN
            cooldowns.append(reopened.cooldown_seconds)
            assert reopened.cooldown_seconds is not None
            clock.advance(reopened.cooldown_seconds - 1)
            with sessions.begin() as session:
                assert breaker.gate(session).probes == ()
            clock.advance(1)
        assert cooldowns == [60, 100, 100]

    def test_only_the_probe_holder_decides_a_half_open_circuit(
        self, breaker: CircuitBreaker, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        open_and_cool_down(breaker, sessions, clock)
        with sessions.begin() as session:
            assert breaker.gate(session, owner="prober").probes == ("pay",)
            # A late success of an item claimed before the circuit opened decides nothing.
            assert breaker.record(session, [("pay", "capture", True)], actor="late") == []
            assert breaker.states(session)[0].status is HALF_OPEN
            (reopened,) = breaker.record(session, failures(1), actor="prober")
        assert (reopened.from_status, reopened.to_status) == (HALF_OPEN, OPEN)

    def test_failures_after_closing_count_from_zero(
        self, breaker: CircuitBreaker, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        open_and_cool_down(breaker, sessions, clock)
        with sessions.begin() as session:
            breaker.gate(session)
            transitions = breaker.record(session, [("pay", "capture", True), *failures(2)])
        assert [t.to_status for t in transitions] == [CLOSED]
        assert state_of(sessions, "pay").consecutive_failures == 2


class TestProbesNeedWork:
    """A probe starts only when its key has an item to claim; open circuits' items do not
    count as due for an idle worker until a probe may take them."""

    def test_no_probe_while_the_keys_items_are_not_due(
        self,
        breaker: CircuitBreaker,
        sessions: sessionmaker[Session],
        queue: RetryQueue,
        clock: ManualClock,
    ) -> None:
        with sessions.begin() as session:
            queue.enqueue(session, "capture", {}, plugin_name="pay", delay=60)
        open_and_cool_down(breaker, sessions, clock)
        # gates at 30, 35, 40, 45 and 50 s; at 60 s the item is due
        held_then_probed(breaker, sessions, clock, gates=5, every=5, then=5)

    def test_no_probe_while_the_key_is_paused(
        self,
        breaker: CircuitBreaker,
        sessions: sessionmaker[Session],
        queue: RetryQueue,
        clock: ManualClock,
    ) -> None:
        """A paused key's items are skipped by every claim, the probe's too: its open
        circuit starts no probe (no half-open turn, no audit row, nothing to give back)
        until the pause ends, and an idle worker waits for the pause's end, not for the
        probe."""
        paused_at = clock.now()
        with sessions.begin() as session:
            queue.enqueue(session, "capture", {}, plugin_name="pay")
            queue.pause_key(session, "pay", seconds=60, reason="429 from the provider")
        open_and_cool_down(breaker, sessions, clock)  # 30 s: "pay" stays paused 30 s more

        def waits_for_the_pause(session: Session) -> None:
            waiting = queue.seconds_until_claimable(session, blocked=breaker.probes_due_in(session))
            elapsed = (clock.now() - paused_at).total_seconds()
            assert waiting == pytest.approx(60 - elapsed)

        # gates at 30, 40 and 50 s; at 60.5 s the pause is over
        held_then_probed(
            breaker, sessions, clock, gates=3, every=10, then=0.5, each=waits_for_the_pause
        )

    def test_a_pause_holds_back_only_its_own_keys_probe(
        self,
        breaker: CircuitBreaker,
        sessions: sessionmaker[Session],
        queue: RetryQueue,
        clock: ManualClock,
    ) -> None:
        with sessions.begin() as session:
            queue.enqueue(session, "capture", {}, plugin_name="pay")
            queue.enqueue(session, "send", {}, plugin_name="mail")
            breaker.record(session, failures(3) + failures(3, plugin="mail", event_type="send"))
            queue.pause_key(session, "pay", seconds=60)
        clock.advance(30)
        with sessions.begin() as session:
            gate = breaker.gate(session, owner="w")
        assert gate.probes == ("mail",) and gate.blocked == {"pay", "mail"}
        assert [t.key for t in gate.transitions] == ["mail"]

    def test_next_due_waits_for_the_circuit(
        self,
        breaker: CircuitBreaker,
        sessions: sessionmaker[Session],
        queue: RetryQueue,
        clock: ManualClock,
    ) -> None:
        with sessions.begin() as session:
            breaker.record(session, failures(3))  # open until 30 s
            queue.enqueue(session, "capture", {}, plugin_name="pay")  # due now
            queue.enqueue(session, "capture", {}, plugin_name="pay", delay=50)
            queue.enqueue(session, "send", {}, plugin_name="mail", delay=40)
        clock.advance(10)
        with sessions() as session:
            assert queue.seconds_until_claimable(session) == -10
            blocked = breaker.probes_due_in(session)
            assert blocked == {"pay": 20}
            assert queue.seconds_until_claimable(session, blocked=blocked) == 20
        clock.advance(25)  # 35 s: the cool-down is over, the held item is due
        with sessions() as session:
            blocked = breaker.probes_due_in(session)
            assert queue.seconds_until_claimable(session, blocked=blocked) == -5
            assert queue.seconds_until_claimable(session, blocked={"pay": 600}) == 5  # mail


class TestManual:
    """Operators open and close circuits by hand; both are audited."""

    def test_open_then_close(
        self, breaker: CircuitBreaker, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        with sessions.begin() as session:
            opened = breaker.open(session, "pay", cooldown=600, reason="db down", actor="ops")
        assert opened.status is OPEN and opened.open_until == clock.now() + timedelta(minutes=10)
        assert opened.reason == "db down"
        with sessions.begin() as session:
            assert breaker.gate(session).blocked == {"pay"}
            closed = breaker.close(session, "pay", actor="ops")
            assert breaker.gate(session).blocked == frozenset()
        assert closed.status is CLOSED
        with sessions() as session:
            actors = {row.actor for row in circuit_events(session)}
        assert trail(sessions) == [
            ("pay", "closed", "open", "db down"),
            ("pay", "open", "closed", "manual_close"),
        ]
        assert actors == {"ops"}

    def test_closing_a_closed_or_unknown_circuit_changes_nothing(
        self, breaker: CircuitBreaker, sessions: sessionmaker[Session]
    ) -> None:
        with sessions.begin() as session:
            assert breaker.close(session, "never-seen").status is CLOSED
            breaker.record(session, failures(1))
            assert breaker.close(session, "pay").consecutive_failures == 0
        assert trail(sessions) == []

    def test_bad_keys_are_refused(
        self, breaker: CircuitBreaker, sessions: sessionmaker[Session]
    ) -> None:
        with sessions.begin() as session:
            with pytest.raises(InvalidArgument, match="key"):
                breaker.open(session, "")
            with pytest.raises(InvalidArgument, match="key"):
                breaker.close(session, "x" * 600)
            with pytest.raises(InvalidArgument, match="cooldown"):
                breaker.open(session, "pay", cooldown=0)


def test_queue_and_breaker_share_the_clock(
    breaker: CircuitBreaker, queue: RetryQueue, clock: ManualClock
) -> None:
    assert breaker.clock is clock and queue.clock is clock


class TestAuditRetention:
    """Cleanup prunes the audit trail like the history: past twice the retention."""

    def test_cleanup_deletes_old_audit_rows_only(
        self,
        breaker: CircuitBreaker,
        sessions: sessionmaker[Session],
        clock: ManualClock,
        queue: RetryQueue,
    ) -> None:
        with sessions.begin() as session:
            breaker.record(session, failures(3))  # opened: one audit row
        clock.advance(timedelta(days=13))
        with sessions.begin() as session:
            breaker.close(session, "pay")  # a second, recent one
        clock.advance(timedelta(days=2))  # the first is now 15 days old, the second 2
        with sessions.begin() as session:
            result = queue.cleanup(session, retention_days=7)
        assert result.circuit_events_deleted == 1
        assert trail(sessions) == [("pay", "open", "closed", "manual_close")]
