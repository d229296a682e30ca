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

import logging
import os
import socket
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from retryqueue import limits
from retryqueue import statements as sql
from retryqueue import validation as check
from retryqueue.breaker_policy import CircuitCounters, CircuitRules, CircuitStatus, Step
from retryqueue.clock import Clock, SystemClock
from retryqueue.errors import InvalidArgument, database_error
from retryqueue.models import CIRCUIT_KEY_LENGTH
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

logger = logging.getLogger("retryqueue.circuits")

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
        due = [row.circuit_key for row in rows if self.rules.probe_due(_counters(row), row.now)]
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
                counters = _counters(row)
                if not self.rules.probe_due(counters, row.now):
                    continue  # someone probed between our two reads
                step = self.rules.start_probe(counters, row.now)
                if self._write(session, at, row, step, probe_owner=holder):
                    probes.append(row.circuit_key)
                    transitions.append(_transition(row, step))
            self._audit(session, at, transitions, holder)
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
                    if not _pristine(row)
                ]
            if not keys:
                return []
            keys.sort()
        transitions: list[Transition] = []
        for row in self._locked_rows(session, at, keys):
            counters, reason = _counters(row), None
            if _someone_elses_probe(row, actor):
                continue  # late outcomes of items claimed before the circuit opened
            for succeeded in by_key[row.circuit_key]:
                step = self.rules.observe(counters, succeeded, row.now)
                if step.changed:
                    transitions.append(_transition(row, step, previous=transitions))
                    reason = step.reason
                counters = step.counters
            if counters != _counters(row):
                owner = row.probe_owner if counters.status is CircuitStatus.HALF_OPEN else None
                self._write(session, at, row, Step(counters, reason), probe_owner=owner)
        self._audit(session, at, transitions, actor)
        return transitions

    def probes_due_in(self, session: Session) -> dict[str, float]:
        """Every open or half-open key, with the seconds until a probe may start for it
        (<= 0: now, if it has an item to claim). A worker's idle wait uses it so that it
        does not keep waking for items its open circuits hold back."""
        at = self.now(session)
        due_in: dict[str, float] = {}
        for row in fetch_all(session, sql.circuits_not_closed(at), "circuit outlook"):
            counters = _counters(row)
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
        key = _key(key)
        at = self.now(session)
        for row in self._locked_rows(session, at, [key], create=False):
            if CircuitStatus(row.state) is CircuitStatus.HALF_OPEN:
                counters = _counters(row)
                reopened = CircuitCounters(
                    status=CircuitStatus.OPEN,
                    opened_at=counters.opened_at,
                    open_until=row.now,
                    cooldown_seconds=counters.cooldown_seconds,
                )
                self._write(session, at, row, Step(reopened, row.reason), probe_owner=None)
        return self._state(session, at, key)

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
        key = _key(key)
        seconds = self.rules.cooldown if cooldown is None else cooldown
        seconds = check.seconds("cooldown", seconds, allow_zero=False)
        reason = check.text("reason", reason)
        at = self.now(session)
        (row,) = self._locked_rows(session, at, [key])
        step = Step(self.rules.trip(_counters(row), row.now, seconds), reason)
        self._write(session, at, row, step, probe_owner=None)
        self._audit(session, at, [_transition(row, step)], actor)
        return self._state(session, at, key)

    def close(self, session: Session, key: str, *, actor: str | None = None) -> CircuitState:
        """Close ``key``'s circuit now and reset its counters (its items run again)."""
        key = _key(key)
        at = self.now(session)
        for row in self._locked_rows(session, at, [key], create=False):
            was_closed = CircuitStatus(row.state) is CircuitStatus.CLOSED
            reason = None if was_closed else REASON_MANUAL_CLOSE
            step = Step(self.rules.close(_counters(row)), reason)
            if step.counters != _counters(row) or step.changed:
                self._write(session, at, row, step, probe_owner=None)
            if step.changed:
                self._audit(session, at, [_transition(row, step)], actor)
        return self._state(session, at, key)

    def states(self, session: Session) -> list[CircuitState]:
        """Every stored circuit, by key (keys without a row are closed)."""
        return circuit_states(session)

    # -- persistence ---------------------------------------------------------------------

    def _locked_rows(
        self, session: Session, at: datetime | None, keys: Sequence[str], *, create: bool = True
    ) -> list[Any]:
        """The circuits of ``keys`` locked FOR UPDATE (in key order); missing ones created."""
        rows = fetch_all(session, sql.circuits_by_key(at, keys, lock=True), "circuit update")
        missing = sorted(set(keys) - {row.circuit_key for row in rows})
        if missing and create:
            dialect = session.get_bind().dialect.name
            try:
                session.execute(
                    sql.insert_circuits(dialect, at), [{"circuit_key": key} for key in missing]
                )
            except SQLAlchemyError as exc:
                raise database_error("circuit update", exc) from exc
            rows += fetch_all(
                session, sql.circuits_by_key(at, missing, lock=True), "circuit update"
            )
            rows.sort(key=lambda row: row.circuit_key)
        return rows

    def _write(
        self,
        session: Session,
        at: datetime | None,
        row: Any,
        step: Step,
        *,
        probe_owner: str | None,
    ) -> bool:
        """Store ``step``'s counters if the row is unchanged since read; False if it was not."""
        counters = step.counters
        values = {
            "state": counters.status.value,
            "consecutive_failures": counters.consecutive_failures,
            "window_started_at": counters.window_started_at,
            "window_attempts": counters.window_attempts,
            "window_failures": counters.window_failures,
            "previous_attempts": counters.previous_attempts,
            "previous_failures": counters.previous_failures,
            "opened_at": counters.opened_at,
            "open_until": counters.open_until,
            "cooldown_seconds": counters.cooldown_seconds,
            "probe_deadline": counters.probe_deadline,
            "probe_owner": probe_owner,
            "reason": step.reason if step.reason is not None else row.reason,
        }
        try:
            result = session.execute(sql.update_circuit(at, row.circuit_key, row.version, values))
        except SQLAlchemyError as exc:
            raise database_error("circuit update", exc) from exc
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def _audit(
        self,
        session: Session,
        at: datetime | None,
        transitions: Sequence[Transition],
        actor: str | None,
    ) -> None:
        """Write the transitions to the audit trail and log them."""
        if not transitions:
            return
        rows = [
            {
                "circuit_key": t.key,
                "from_state": t.from_status.value,
                "to_state": t.to_status.value,
                "reason": t.reason[:255],
                "cooldown_seconds": t.cooldown_seconds,
                "actor": actor[:255] if actor else None,
            }
            for t in transitions
        ]
        try:
            session.execute(sql.insert_circuit_events(at), rows)
        except SQLAlchemyError as exc:
            raise database_error("circuit audit", exc) from exc
        for t in transitions:
            level = logging.WARNING if t.to_status is CircuitStatus.OPEN else logging.INFO
            logger.log(
                level,
                "circuit %s: %s -> %s (%s)",
                t.key,
                t.from_status.value,
                t.to_status.value,
                t.reason,
                extra={
                    "circuit_key": t.key,
                    "from_state": t.from_status.value,
                    "to_state": t.to_status.value,
                    "reason": t.reason,
                    "cooldown_seconds": t.cooldown_seconds,
                    "open_until": t.open_until,
                    "actor": actor,
                },
            )

    def _state(self, session: Session, at: datetime | None, key: str) -> CircuitState:
        rows = fetch_all(session, sql.circuits_by_key(at, [key], lock=False), "circuit state")
        if rows:
            return _state(rows[0])
        return CircuitState(
            key=key,
            status=CircuitStatus.CLOSED,
            consecutive_failures=0,
            window_attempts=0,
            window_failures=0,
            opened_at=None,
            open_until=None,
            cooldown_seconds=0.0,
            probe_owner=None,
            probe_deadline=None,
            reason=None,
            updated_at=None,
        )


# -- reading ------------------------------------------------------------------------------


def circuit_states(session: Session) -> list[CircuitState]:
    """Every stored circuit, by key (what ``retryqueue circuits`` lists)."""
    return [_state(row) for row in fetch_all(session, sql.all_circuits(), "circuit states")]


def circuit_events(
    session: Session, key: str | None = None, limit: int = 100
) -> list[CircuitEvent]:
    """The newest transitions from the audit trail (of one key, or all), newest first."""
    limit = check.bounded_int("limit", limit, low=1, high=100_000)
    stmt = sql.circuit_events(None if key is None else _key(key), limit)
    return [
        CircuitEvent(
            id=row.id,
            key=row.circuit_key,
            from_status=CircuitStatus(row.from_state),
            to_status=CircuitStatus(row.to_state),
            reason=row.reason,
            cooldown_seconds=row.cooldown_seconds,
            actor=row.actor,
            occurred_at=row.occurred_at,
        )
        for row in fetch_all(session, stmt, "circuit events")
    ]


def transition_counts(session: Session) -> list[tuple[str, CircuitStatus, int]]:
    """Audited transitions counted per (key, state entered), for the metrics exporter."""
    rows = fetch_all(session, sql.circuit_transition_counts(), "circuit transitions")
    return [(key, CircuitStatus(to_state), int(count)) for key, to_state, count in rows]


# -- helpers ------------------------------------------------------------------------------


def _someone_elses_probe(row: Any, actor: str | None) -> bool:
    """A half-open circuit is decided by its probe: other actors' outcomes don't count."""
    return (
        CircuitStatus(row.state) is CircuitStatus.HALF_OPEN
        and actor is not None
        and row.probe_owner is not None
        and row.probe_owner != actor
    )


def _key(key: object) -> str:
    return check.text("key", key, max_length=CIRCUIT_KEY_LENGTH)


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:255]


def _counters(row: Any) -> CircuitCounters:
    return CircuitCounters(
        status=CircuitStatus(row.state),
        consecutive_failures=row.consecutive_failures,
        window_started_at=row.window_started_at,
        window_attempts=row.window_attempts,
        window_failures=row.window_failures,
        previous_attempts=row.previous_attempts,
        previous_failures=row.previous_failures,
        opened_at=row.opened_at,
        open_until=row.open_until,
        cooldown_seconds=float(row.cooldown_seconds),
        probe_deadline=row.probe_deadline,
    )


def _pristine(row: Any) -> bool:
    """A closed circuit with no failure to forget: a success changes nothing."""
    return CircuitStatus(row.state) is CircuitStatus.CLOSED and row.consecutive_failures == 0


def _transition(row: Any, step: Step, previous: Iterable[Transition] = ()) -> Transition:
    """The transition ``step`` made, from the row's status (or the last transition's)."""
    before = CircuitStatus(row.state)
    for earlier in previous:
        if earlier.key == row.circuit_key:
            before = earlier.to_status
    counters = step.counters
    opening = counters.status is CircuitStatus.OPEN
    return Transition(
        key=row.circuit_key,
        from_status=before,
        to_status=counters.status,
        reason=step.reason or "",
        at=row.now,
        cooldown_seconds=counters.cooldown_seconds if opening else None,
        open_until=counters.open_until if opening else None,
    )


def _state(row: Any) -> CircuitState:
    return CircuitState(
        key=row.circuit_key,
        status=CircuitStatus(row.state),
        consecutive_failures=row.consecutive_failures,
        window_attempts=row.window_attempts,
        window_failures=row.window_failures,
        opened_at=row.opened_at,
        open_until=row.open_until,
        cooldown_seconds=float(row.cooldown_seconds),
        probe_owner=row.probe_owner,
        probe_deadline=row.probe_deadline,
        reason=row.reason,
        updated_at=row.updated_at,
    )
