"""Circuit breaker rules, in pure Python: no database, no clock, no imports from the package.

A circuit guards one key (a plugin, or a plugin and event type). It is **closed** while
attempts go through; it **opens** after ``failure_threshold`` consecutive failures, or when
the failure rate over the last ``window`` seconds reaches ``failure_rate`` with at least
``min_attempts`` attempts; while open, nothing for its key runs. Once ``open_until`` has
passed, a single probe is let through (**half-open**): its success closes the circuit, its
failure reopens it with twice the previous cool-down, capped at ``max_cooldown``.

:mod:`retryqueue.circuits` stores :class:`CircuitCounters` in ``daz_retry_circuits`` and
applies what :class:`CircuitRules` returns; it never reimplements a rule.

The failure rate is a sliding-window estimate from two fixed buckets (the current one
and the one before it, weighted by how much of it still lies inside the window), so that
five columns hold it instead of one row per attempt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

__all__ = [
    "CircuitCounters",
    "CircuitRules",
    "CircuitStatus",
    "Step",
]


class CircuitStatus(StrEnum):
    """The states of a circuit (column ``daz_retry_circuits.state``)."""

    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"


# What a transition is called in the audit trail and the logs.
REASON_CONSECUTIVE = "consecutive_failures"
REASON_RATE = "failure_rate"
REASON_PROBE = "probe"
REASON_PROBE_TIMED_OUT = "probe_timed_out"
REASON_PROBE_SUCCEEDED = "probe_succeeded"
REASON_PROBE_FAILED = "probe_failed"


@dataclass(frozen=True, slots=True)
class CircuitCounters:
    """What the rules read and write for one circuit: its state and its counters.

    ``window_started_at`` starts the current bucket of the failure-rate window;
    ``window_*`` count the current bucket, ``previous_*`` the bucket before it.
    ``cooldown_seconds`` is the cool-down of the latest opening (0 if never opened).
    """

    status: CircuitStatus = CircuitStatus.CLOSED
    consecutive_failures: int = 0
    window_started_at: datetime | None = None
    window_attempts: int = 0
    window_failures: int = 0
    previous_attempts: int = 0
    previous_failures: int = 0
    opened_at: datetime | None = None
    open_until: datetime | None = None
    cooldown_seconds: float = 0.0
    probe_deadline: datetime | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """The rules' answer: the counters to store, and the transition if the state changed.

    ``reason`` is None when the state did not change.
    """

    counters: CircuitCounters
    reason: str | None = None

    @property
    def changed(self) -> bool:
        """Whether this step is a transition (audit it, log it)."""
        return self.reason is not None


@dataclass(frozen=True, slots=True)
class CircuitRules:
    """When a circuit opens, how long it stays open, and when it probes.

    :param failure_threshold: consecutive failures that open the circuit.
    :param failure_rate: a failure ratio in (0, 1] that opens it too, once the window
        holds at least ``min_attempts`` attempts; None disables the rate rule.
    :param window: the failure-rate window, in seconds.
    :param min_attempts: attempts the window needs before the rate counts.
    :param cooldown: seconds the circuit stays open after it first opens.
    :param max_cooldown: the cap on the cool-down, which doubles at every failed probe.
    :param probe_timeout: seconds a half-open circuit waits for its probe's result before
        it lets another probe through (the prober crashed, or found nothing to run).

    Raises ValueError on settings that make no sense (the breaker checks them first).
    """

    failure_threshold: int = 5
    failure_rate: float | None = None
    window: float = 60.0
    min_attempts: int = 10
    cooldown: float = 30.0
    max_cooldown: float = 600.0
    probe_timeout: float = 300.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if self.failure_rate is not None and not 0.0 < self.failure_rate <= 1.0:
            raise ValueError("failure_rate must be in (0, 1]")
        if self.min_attempts < 1:
            raise ValueError("min_attempts must be >= 1")
        for name in ("window", "cooldown", "max_cooldown", "probe_timeout"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds")
        if self.max_cooldown < self.cooldown:
            raise ValueError("max_cooldown must be >= cooldown")

    # -- attempts ------------------------------------------------------------------------

    def observe(self, counters: CircuitCounters, succeeded: bool, now: datetime) -> Step:
        """Account one attempt's outcome at ``now``; open or close the circuit if due.

        While open, outcomes change nothing (they are attempts that started before the
        circuit opened). While half-open, the first outcome decides: a success closes
        the circuit, a failure reopens it with a doubled cool-down.
        """
        if counters.status is CircuitStatus.OPEN:
            return Step(counters)
        if counters.status is CircuitStatus.HALF_OPEN:
            if succeeded:
                return Step(self.close(counters), REASON_PROBE_SUCCEEDED)
            cooldown = min(max(counters.cooldown_seconds, self.cooldown) * 2, self.max_cooldown)
            return Step(self.trip(counters, now, cooldown), REASON_PROBE_FAILED)
        counted = self._slide(counters, now)
        counted = replace(
            counted,
            consecutive_failures=0 if succeeded else counted.consecutive_failures + 1,
            window_attempts=counted.window_attempts + 1,
            window_failures=counted.window_failures + (0 if succeeded else 1),
        )
        if succeeded:
            return Step(counted)
        if counted.consecutive_failures >= self.failure_threshold:
            return Step(self.trip(counted, now, self.cooldown), REASON_CONSECUTIVE)
        if self.rate_exceeded(counted, now):
            return Step(self.trip(counted, now, self.cooldown), REASON_RATE)
        return Step(counted)

    def rate(self, counters: CircuitCounters, now: datetime) -> tuple[float, float]:
        """The (attempts, failures) estimated to lie inside the window ending at ``now``."""
        slid = self._slide(counters, now)
        if slid.window_started_at is None:
            return 0.0, 0.0
        elapsed = (now - slid.window_started_at).total_seconds()
        weight = max(0.0, 1.0 - elapsed / self.window)
        attempts = slid.previous_attempts * weight + slid.window_attempts
        failures = slid.previous_failures * weight + slid.window_failures
        return attempts, failures

    def rate_exceeded(self, counters: CircuitCounters, now: datetime) -> bool:
        """Whether the failure-rate rule (if enabled) says the circuit should open."""
        if self.failure_rate is None:
            return False
        attempts, failures = self.rate(counters, now)
        # A small tolerance: weighted counts are floats, and 5/10 must reach 0.5.
        return attempts >= self.min_attempts and failures >= attempts * self.failure_rate - 1e-9

    def _slide(self, counters: CircuitCounters, now: datetime) -> CircuitCounters:
        start = counters.window_started_at
        if start is None:
            return replace(counters, window_started_at=now)
        elapsed = (now - start).total_seconds()
        if elapsed < self.window:
            return counters
        if elapsed < 2 * self.window:
            return replace(
                counters,
                window_started_at=start + timedelta(seconds=self.window),
                window_attempts=0,
                window_failures=0,
                previous_attempts=counters.window_attempts,
                previous_failures=counters.window_failures,
            )
        return replace(
            counters,
            window_started_at=now,
            window_attempts=0,
            window_failures=0,
            previous_attempts=0,
            previous_failures=0,
        )

    # -- transitions ---------------------------------------------------------------------

    def trip(self, counters: CircuitCounters, now: datetime, cooldown: float) -> CircuitCounters:
        """The circuit opened at ``now`` for ``cooldown`` seconds, its counters reset."""
        return replace(
            _reset(counters),
            status=CircuitStatus.OPEN,
            opened_at=now,
            open_until=now + timedelta(seconds=cooldown),
            cooldown_seconds=cooldown,
        )

    def close(self, counters: CircuitCounters) -> CircuitCounters:
        """The circuit closed, its counters reset (the cool-down starts over next time)."""
        return replace(
            _reset(counters),
            status=CircuitStatus.CLOSED,
            opened_at=None,
            open_until=None,
            cooldown_seconds=0.0,
        )

    def probe_due(self, counters: CircuitCounters, now: datetime) -> bool:
        """Whether a probe may start: open past its cool-down, or a probe that timed out."""
        if counters.status is CircuitStatus.OPEN:
            return counters.open_until is None or now >= counters.open_until
        if counters.status is CircuitStatus.HALF_OPEN:
            return counters.probe_deadline is None or now >= counters.probe_deadline
        return False

    def start_probe(self, counters: CircuitCounters, now: datetime) -> Step:
        """The circuit half-open, its single probe running until ``now + probe_timeout``.

        From half-open (the previous probe never reported back) the reason says so.
        """
        timed_out = counters.status is CircuitStatus.HALF_OPEN
        probing = replace(
            counters,
            status=CircuitStatus.HALF_OPEN,
            probe_deadline=now + timedelta(seconds=self.probe_timeout),
        )
        return Step(probing, REASON_PROBE_TIMED_OUT if timed_out else REASON_PROBE)


def _reset(counters: CircuitCounters) -> CircuitCounters:
    return replace(
        counters,
        consecutive_failures=0,
        window_started_at=None,
        window_attempts=0,
        window_failures=0,
        previous_attempts=0,
        previous_failures=0,
        probe_deadline=None,
    )
