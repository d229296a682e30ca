"""The circuit breaker rules: pure Python, no database, time passed in."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from retryqueue import CircuitBreaker, InvalidArgument
from retryqueue.breaker_policy import CircuitCounters, CircuitRules, CircuitStatus

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
CLOSED, OPEN, HALF_OPEN = CircuitStatus.CLOSED, CircuitStatus.OPEN, CircuitStatus.HALF_OPEN


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(
    rules: CircuitRules, outcomes: list[tuple[float, bool]], start: CircuitCounters | None = None
) -> tuple[CircuitCounters, list[str]]:
    """Feed (time, succeeded) outcomes; the final counters and the reasons of transitions."""
    counters = start or CircuitCounters()
    reasons = []
    for when, succeeded in outcomes:
        step = rules.observe(counters, succeeded, at(when))
        if step.reason is not None:
            reasons.append(step.reason)
        counters = step.counters
    return counters, reasons


class TestConsecutiveFailures:
    """N failures in a row open the circuit; a success in between starts the count over."""

    def test_opens_at_the_threshold(self) -> None:
        rules = CircuitRules(failure_threshold=3, cooldown=30)
        counters, reasons = run(rules, [(0, False), (1, False)])
        assert counters.status is CLOSED and counters.consecutive_failures == 2
        counters, reasons = run(rules, [(2, False)], counters)
        assert counters.status is OPEN and reasons == ["consecutive_failures"]
        assert counters.opened_at == at(2) and counters.open_until == at(32)
        assert counters.cooldown_seconds == 30 and counters.consecutive_failures == 0

    def test_a_success_resets_the_count(self) -> None:
        rules = CircuitRules(failure_threshold=3)
        counters, reasons = run(rules, [(0, False), (1, False), (2, True), (3, False), (4, False)])
        assert counters.status is CLOSED and counters.consecutive_failures == 2 and not reasons

    def test_outcomes_while_open_change_nothing(self) -> None:
        rules = CircuitRules(failure_threshold=1)
        opened, _ = run(rules, [(0, False)])
        later, reasons = run(rules, [(1, True), (2, False)], opened)
        assert later == opened and reasons == []


class TestFailureRate:
    """The rate rule counts the last ``window`` seconds, once min_attempts are in."""

    rules = CircuitRules(failure_threshold=100, failure_rate=0.5, window=60, min_attempts=4)

    def test_opens_when_the_rate_is_reached_with_enough_attempts(self) -> None:
        counters, reasons = run(self.rules, [(0, True), (1, False), (2, True)])
        assert counters.status is CLOSED  # 1 failure in 3 attempts: below min_attempts anyway
        counters, reasons = run(self.rules, [(3, False)], counters)
        assert counters.status is OPEN and reasons == ["failure_rate"]

    def test_below_the_rate_stays_closed(self) -> None:
        counters, _ = run(self.rules, [(i, i % 3 == 0) for i in range(12)])
        assert counters.status is OPEN  # 8 failures in 12
        counters, _ = run(self.rules, [(i, i % 4 != 0) for i in range(12)])
        assert counters.status is CLOSED  # 3 failures in 12, never half of the attempts

    def test_old_attempts_fall_out_of_the_window(self) -> None:
        counters, _ = run(self.rules, [(0, False), (1, False), (2, False)])
        # Two windows later the early failures are forgotten: 1 attempt, below min_attempts.
        counters, _ = run(self.rules, [(150, False)], counters)
        assert counters.status is CLOSED and counters.window_attempts == 1
        assert self.rules.rate(counters, at(150)) == (1.0, 1.0)

    def test_previous_bucket_is_weighted_by_its_overlap(self) -> None:
        counters, _ = run(self.rules, [(10, False), (20, False), (30, True)])
        # The first bucket is [10, 70); at 100 s it overlaps the window (40, 100] by half.
        attempts, failures = self.rules.rate(counters, at(100))
        assert (attempts, failures) == (1.5, 1.0)

    def test_disabled_without_a_rate(self) -> None:
        rules = CircuitRules(failure_threshold=100)
        counters, _ = run(rules, [(i, False) for i in range(50)])
        assert counters.status is CLOSED and not rules.rate_exceeded(counters, at(50))


class TestHalfOpen:
    """After the cool-down one probe; its outcome closes or reopens with a longer cool-down."""

    rules = CircuitRules(failure_threshold=1, cooldown=30, max_cooldown=100, probe_timeout=60)

    def test_probe_due_only_after_the_cooldown(self) -> None:
        opened, _ = run(self.rules, [(0, False)])
        assert not self.rules.probe_due(opened, at(29.999))
        assert self.rules.probe_due(opened, at(30))
        step = self.rules.start_probe(opened, at(30))
        assert step.counters.status is HALF_OPEN and step.reason == "probe"
        assert step.counters.probe_deadline == at(90)
        assert not self.rules.probe_due(step.counters, at(89))

    def test_a_probe_that_never_reports_is_handed_out_again(self) -> None:
        opened, _ = run(self.rules, [(0, False)])
        probing = self.rules.start_probe(opened, at(30)).counters
        assert self.rules.probe_due(probing, at(90))
        assert self.rules.start_probe(probing, at(90)).reason == "probe_timed_out"

    def test_success_closes_and_resets(self) -> None:
        opened, _ = run(self.rules, [(0, False)])
        probing = self.rules.start_probe(opened, at(30)).counters
        closed, reasons = run(self.rules, [(31, True)], probing)
        assert closed == replace(CircuitCounters(), status=CLOSED)
        assert reasons == ["probe_succeeded"]

    def test_failure_reopens_with_a_doubled_capped_cooldown(self) -> None:
        counters, _ = run(self.rules, [(0, False)])
        cooldowns = []
        now = 0.0
        for _ in range(4):
            now = (counters.open_until - T0).total_seconds() if counters.open_until else now
            probing = self.rules.start_probe(counters, at(now)).counters
            counters, reasons = run(self.rules, [(now + 1, False)], probing)
            assert reasons == ["probe_failed"] and counters.status is OPEN
            cooldowns.append(counters.cooldown_seconds)
            assert counters.open_until == at(now + 1 + counters.cooldown_seconds)
        assert cooldowns == [60, 100, 100, 100]

    def test_closed_circuits_never_probe(self) -> None:
        assert not self.rules.probe_due(CircuitCounters(), at(0))


class TestSettings:
    """Nonsense settings are refused, by the rules and (as InvalidArgument) by the breaker."""

    @pytest.mark.parametrize(
        "settings",
        [
            {"failure_threshold": 0},
            {"failure_rate": 0.0},
            {"failure_rate": 1.5},
            {"min_attempts": 0},
            {"window": 0},
            {"cooldown": -1},
            {"cooldown": 60, "max_cooldown": 30},
            {"probe_timeout": float("inf")},
        ],
    )
    def test_invalid(self, settings: dict[str, float]) -> None:
        with pytest.raises(ValueError, match=r"must"):
            CircuitRules(**settings)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            CircuitBreaker(**settings)  # type: ignore[arg-type]

    def test_breaker_refuses_wrong_types(self) -> None:
        with pytest.raises(InvalidArgument, match="failure_threshold"):
            CircuitBreaker(failure_threshold="5")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="failure_rate"):
            CircuitBreaker(failure_rate=True)
        with pytest.raises(InvalidArgument, match="per_event_type"):
            CircuitBreaker(per_event_type="yes")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="clock"):
            CircuitBreaker(clock=object())  # type: ignore[arg-type]

    def test_keys(self) -> None:
        assert CircuitBreaker().key_for("payments", "capture") == "payments"
        assert CircuitBreaker(per_event_type=True).key_for("pay", "capture") == "pay:capture"
        assert CircuitBreaker().key_for(None, "capture") is None
        assert CircuitBreaker(per_event_type=True).key_for("", "capture") is None
