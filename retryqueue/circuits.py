"""Circuit breakers per plugin (or per plugin and event type), shared by every worker.

When a downstream is down, every item for it fails, spends its retries and ends in
dead_letter. A :class:`CircuitBreaker` stops that: after ``failure_threshold`` consecutive
failures (or a failure rate over a window) the key's circuit **opens**, and workers skip
its items, which stay pending without spending retries. After the cool-down, one worker
(across all hosts) wins the single **probe** (half-open); its success closes the circuit,
its failure reopens it with a doubled cool-down, capped at ``max_cooldown``.

The state lives in ``daz_retry_circuits`` (revision ``rq0004``), so every worker agrees;
each transition is written to ``daz_retry_circuit_events``, logged on the
``retryqueue.circuits`` logger and exported as metrics. The rules are in
:mod:`retryqueue.breaker_policy`; the SQL in :mod:`retryqueue.statements`. Methods take
the caller's Session and never commit.

A worker loop uses it like this::

    gate = breaker.gate(session, owner=worker_id)         # cheap: one SELECT
    for key in gate.probes:                               # probes this worker won
        items += queue.acquire(session, worker_id, 1, only_key=key,
                               per_event_type=gate.per_event_type)
    items += queue.acquire(session, worker_id, n, skip_keys=gate.blocked,
                           per_event_type=gate.per_event_type)
    ...                                                   # run the handlers
    breaker.record(session, [(item.plugin_name, item.event_type, ok) for ...])

Items without a plugin_name have no circuit: one failing downstream must not stop
unrelated work that happens to carry no plugin. Don't use a breaker when a key's items
fail independently of each other (bad payloads): record only failures that say the
downstream is unhealthy (timeouts, connection errors, 5xx), not permanent errors.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.orm import Session

from retryqueue import limits
from retryqueue import statements as sql
from retryqueue import validation as check
from retryqueue._circuit_rows import (
    audit,
    circuit_events,
    circuit_states,
    counters_of,
    key_state,
    locked_rows,
    pristine,
    someone_elses_probe,
    transition_counts,
    transition_of,
    valid_key,
    write_step,
)
from retryqueue.breaker_policy import CircuitCounters, CircuitRules, CircuitStatus, Step
from retryqueue.clock import Clock, SystemClock
from retryqueue.errors import InvalidArgument
from retryqueue.monitoring import fetch_all
from retryqueue.results import CircuitEvent, CircuitState, Gate, Transition

__all__ = [
    "CircuitBreaker",
    "CircuitEvent",
    "CircuitState",
    "CircuitStatus",
    "Gate",
    "Transition",
    "circuit_events",
    "circuit_states",
    "transition_counts",
]

_SERVER_CLOCK_DIALECTS = frozenset({"postgresql", "mysql", "mariadb"})
REASON_MANUAL_CLOSE = "manual_close"


class CircuitBreaker:
    """Per-key circuit breakers stored in the database (see the module docstring).

    :param failure_threshold: consecutive failures that open a circuit.
    :param failure_rate: also open when the failure ratio over the last ``window`` seconds
        reaches this (0 < rate <= 1) with at least ``min_attempts`` attempts; None: off.
        The rate rule writes the circuit row on every :meth:`record`, successes included.
    :param window: the failure-rate window, in seconds.
    :param min_attempts: attempts the window needs before the rate counts.
    :param cooldown: seconds a circuit stays open before its first probe.
    :param max_cooldown: cap on the cool-down, which doubles after each failed probe.
    :param per_event_type: key circuits by ``plugin_name:event_type`` instead of plugin.
    :param probe_timeout: seconds a half-open circuit waits for its probe's outcome before
        another worker may probe (the prober crashed); make it longer than a handler runs.
    :param clock: where "now" comes from (like :class:`~retryqueue.queue.RetryQueue`'s).
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        failure_rate: float | None = None,
        window: float = 60,
        min_attempts: int = 10,
        cooldown: float = 30,
        max_cooldown: float = 600,
        per_event_type: bool = False,
        probe_timeout: float = 300,
        clock: Clock | None = None,
    ) -> None:
        if failure_rate is not None:
            if isinstance(failure_rate, bool) or not isinstance(failure_rate, int | float):
                raise InvalidArgument("failure_rate", "expected a number or None")
            if not 0.0 < failure_rate <= 1.0:
                raise InvalidArgument("failure_rate", f"must be in (0, 1], got {failure_rate}")
        cooldown = check.seconds("cooldown", cooldown, allow_zero=False)
        max_cooldown = check.seconds("max_cooldown", max_cooldown, allow_zero=False)
        if max_cooldown < cooldown:
            raise InvalidArgument("max_cooldown", f"must be >= cooldown ({cooldown:g}s)")
        if not isinstance(per_event_type, bool):
            raise InvalidArgument("per_event_type", "expected a bool")
        if clock is not None and not isinstance(clock, Clock):
            raise InvalidArgument("clock", "expected a Clock (an object with now())")
        self.rules = CircuitRules(
            failure_threshold=check.bounded_int("failure_threshold", failure_threshold, low=1),
            failure_rate=None if failure_rate is None else float(failure_rate),
            window=check.seconds("window", window, allow_zero=False),
            min_attempts=check.bounded_int("min_attempts", min_attempts, low=1),
            cooldown=cooldown,
            max_cooldown=max_cooldown,
            probe_timeout=check.seconds("probe_timeout", probe_timeout, allow_zero=False),
        )
        self.per_event_type = per_event_type
        self.clock = clock

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.rules!r}, per_event_type={self.per_event_type})"

    # -- keys and time -------------------------------------------------------------------

    def key_for(self, plugin_name: str | None, event_type: str | None) -> str | None:
        """The circuit key of an item; None (no circuit) when it has no plugin_name."""
        if not plugin_name:
            return None
        if self.per_event_type:
            return f"{plugin_name}:{event_type or ''}"
        return plugin_name

    def now(self, session: Session) -> datetime | None:
        """The operation's "now": a datetime, or None for the database server's clock."""
        if self.clock is not None:
            return self.clock.now()
        if session.get_bind().dialect.name in _SERVER_CLOCK_DIALECTS:
            return None
        return SystemClock().now()

    # -- the worker's side ---------------------------------------------------------------

    def gate(self, session: Session, *, owner: str | None = None) -> Gate:
        """Which keys to skip now, and which probes this caller won (see :class:`Gate`).

        One SELECT when every circuit is closed. An open circuit past its cool-down (or a
        half-open one whose probe timed out) turns half-open here, for exactly one caller
        across all workers: the row is locked with SKIP LOCKED and changed by a
        compare-and-set on its version. ``owner`` (default host:pid) is recorded as the
        probe's holder. A probe starts only for a key that has an item to claim now: a
        circuit whose items are not due yet, or whose key is paused (see
        :mod:`retryqueue.limits`), stays open (no transition, no audit row) until one is.
        """
        at = self.now(session)
        rows = fetch_all(session, sql.circuits_not_closed(at), "circuit gate")
        if not rows:
            return Gate(per_event_type=self.per_event_type)
        due = [row.circuit_key for row in rows if self.rules.probe_due(counters_of(row), row.now)]
        if due:  # a paused key's items are skipped by the probe's claim too: no probe yet
            paused, _ = limits.paused_keys(session, at)
            claimable = sql.claimable_keys(
                at, due, per_event_type=self.per_event_type, limit_filter=paused
            )
            with_items = set(session.scalars(claimable))
            due = [key for key in due if key in with_items]
        probes: list[str] = []
        transitions: list[Transition] = []
        if due:
            holder = check.text("owner", owner) if owner is not None else _default_owner()
            locked = sql.circuits_by_key(at, due, lock=True, skip_locked=True)
            for row in fetch_all(session, locked, "circuit gate"):
                counters = counters_of(row)
                if not self.rules.probe_due(counters, row.now):
                    continue  # someone probed between our two reads
                step = self.rules.start_probe(counters, row.now)
                if write_step(session, at, row, step, probe_owner=holder):
                    probes.append(row.circuit_key)
                    transitions.append(transition_of(row, step))
            audit(session, at, transitions, holder)
        return Gate(
            blocked=frozenset(row.circuit_key for row in rows),
            probes=tuple(probes),
            per_event_type=self.per_event_type,
            transitions=tuple(transitions),
        )

    def record(
        self,
        session: Session,
        outcomes: Sequence[tuple[str | None, str | None, bool]],
        *,
        actor: str | None = None,
    ) -> list[Transition]:
        """Account attempts' outcomes, ``(plugin_name, event_type, succeeded)`` each, in order.

        Opens circuits that reached the threshold or the failure rate; a half-open
        circuit's first outcome closes it (success) or reopens it with a doubled cool-down
        (failure); with ``actor`` given, only the probe holder's outcomes decide it (a
        worker passes its worker id, the ``owner`` it gave :meth:`gate`), so late outcomes
        of items claimed before the circuit opened cannot. Outcomes without a key are
        ignored. Successes on a healthy circuit
        write nothing unless the failure-rate rule is on. Returns the transitions made.
        """
        by_key: dict[str, list[bool]] = {}
        for plugin_name, event_type, succeeded in outcomes:
            key = self.key_for(plugin_name, event_type)
            if key is not None:
                by_key.setdefault(key, []).append(bool(succeeded))
        if not by_key:
            return []
        at = self.now(session)
        keys = sorted(by_key)
        if self.rules.failure_rate is None:
            # Without the rate rule, a key that only succeeded needs a write only if its
            # circuit exists and is not pristine (closed, no failure to forget).
            healthy = [key for key in keys if all(by_key[key])]
            keys = [key for key in keys if not all(by_key[key])]
            if healthy:
                current = sql.circuits_by_key(at, healthy, lock=False)
                keys += [
                    row.circuit_key
                    for row in fetch_all(session, current, "record")
                    if not pristine(row)
                ]
            if not keys:
                return []
            keys.sort()
        transitions: list[Transition] = []
        for row in locked_rows(session, at, keys):
            counters, reason = counters_of(row), None
            if someone_elses_probe(row, actor):
                continue  # late outcomes of items claimed before the circuit opened
            for succeeded in by_key[row.circuit_key]:
                step = self.rules.observe(counters, succeeded, row.now)
                if step.changed:
                    transitions.append(transition_of(row, step, previous=transitions))
                    reason = step.reason
                counters = step.counters
            if counters != counters_of(row):
                owner = row.probe_owner if counters.status is CircuitStatus.HALF_OPEN else None
                write_step(session, at, row, Step(counters, reason), probe_owner=owner)
        audit(session, at, transitions, actor)
        return transitions

    def probes_due_in(self, session: Session) -> dict[str, float]:
        """Every open or half-open key, with the seconds until a probe may start for it
        (<= 0: now, if it has an item to claim). A worker's idle wait uses it so that it
        does not keep waking for items its open circuits hold back."""
        at = self.now(session)
        due_in: dict[str, float] = {}
        for row in fetch_all(session, sql.circuits_not_closed(at), "circuit outlook"):
            counters = counters_of(row)
            until = (
                counters.probe_deadline
                if counters.status is CircuitStatus.HALF_OPEN
                else counters.open_until
            )
            due_in[row.circuit_key] = 0.0 if until is None else (until - row.now).total_seconds()
        return due_in

    def release_probe(self, session: Session, key: str) -> CircuitState:
        """Give back a probe that found nothing to claim: the circuit is open again, due now.

        The next :meth:`gate` hands the probe out again; no transition is audited.
        """
        key = valid_key(key)
        at = self.now(session)
        for row in locked_rows(session, at, [key], create=False):
            if CircuitStatus(row.state) is CircuitStatus.HALF_OPEN:
                counters = counters_of(row)
                reopened = CircuitCounters(
                    status=CircuitStatus.OPEN,
                    opened_at=counters.opened_at,
                    open_until=row.now,
                    cooldown_seconds=counters.cooldown_seconds,
                )
                write_step(session, at, row, Step(reopened, row.reason), probe_owner=None)
        return key_state(session, at, key)

    # -- the operator's side -------------------------------------------------------------

    def open(
        self,
        session: Session,
        key: str,
        *,
        cooldown: float | None = None,
        reason: str = "manual",
        actor: str | None = None,
    ) -> CircuitState:
        """Open ``key``'s circuit now for ``cooldown`` seconds (default: the breaker's).

        After the cool-down it probes like any open circuit; close it by hand to resume
        at once.
        """
        key = valid_key(key)
        seconds = self.rules.cooldown if cooldown is None else cooldown
        seconds = check.seconds("cooldown", seconds, allow_zero=False)
        reason = check.text("reason", reason)
        at = self.now(session)
        (row,) = locked_rows(session, at, [key])
        step = Step(self.rules.trip(counters_of(row), row.now, seconds), reason)
        write_step(session, at, row, step, probe_owner=None)
        audit(session, at, [transition_of(row, step)], actor)
        return key_state(session, at, key)

    def close(self, session: Session, key: str, *, actor: str | None = None) -> CircuitState:
        """Close ``key``'s circuit now and reset its counters (its items run again)."""
        key = valid_key(key)
        at = self.now(session)
        for row in locked_rows(session, at, [key], create=False):
            was_closed = CircuitStatus(row.state) is CircuitStatus.CLOSED
            reason = None if was_closed else REASON_MANUAL_CLOSE
            step = Step(self.rules.close(counters_of(row)), reason)
            if step.counters != counters_of(row) or step.changed:
                write_step(session, at, row, step, probe_owner=None)
            if step.changed:
                audit(session, at, [transition_of(row, step)], actor)
        return key_state(session, at, key)

    def states(self, session: Session) -> list[CircuitState]:
        """Every stored circuit, by key (keys without a row are closed)."""
        return circuit_states(session)


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:255]
