"""The circuit breaker's rows: read back for the breaker and for monitoring, locked and
written by compare-and-set, audited, and turned into values. Private to
:mod:`retryqueue.circuits` (which re-exports the read functions), split out to keep that
module about the breaker's decisions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from retryqueue import statements as sql
from retryqueue import validation as check
from retryqueue.breaker_policy import CircuitCounters, CircuitStatus, Step
from retryqueue.errors import database_error
from retryqueue.models import CIRCUIT_KEY_LENGTH
from retryqueue.monitoring import fetch_all
from retryqueue.results import CircuitEvent, CircuitState, Transition

__all__ = [
    "audit",
    "circuit_events",
    "circuit_states",
    "counters_of",
    "key_state",
    "locked_rows",
    "pristine",
    "someone_elses_probe",
    "state_of",
    "transition_counts",
    "transition_of",
    "valid_key",
    "write_step",
]

# Transitions are logged under the breaker's module, the name operators configure.
logger = logging.getLogger("retryqueue.circuits")


# -- the breaker's writes -----------------------------------------------------------------


def locked_rows(
    session: Session, at: datetime | None, keys: Sequence[str], *, create: bool = True
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
        rows += fetch_all(session, sql.circuits_by_key(at, missing, lock=True), "circuit update")
        rows.sort(key=lambda row: row.circuit_key)
    return rows


def write_step(
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


def audit(
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


# -- reading ------------------------------------------------------------------------------


def key_state(session: Session, at: datetime | None, key: str) -> CircuitState:
    """The state of ``key``'s circuit (closed, with zero counters, when it has no row)."""
    rows = fetch_all(session, sql.circuits_by_key(at, [key], lock=False), "circuit state")
    if rows:
        return state_of(rows[0])
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


def circuit_states(session: Session) -> list[CircuitState]:
    """Every stored circuit, by key (what ``retryqueue circuits`` lists)."""
    return [state_of(row) for row in fetch_all(session, sql.all_circuits(), "circuit states")]


def circuit_events(
    session: Session, key: str | None = None, limit: int = 100
) -> list[CircuitEvent]:
    """The newest transitions from the audit trail (of one key, or all), newest first."""
    limit = check.bounded_int("limit", limit, low=1, high=100_000)
    stmt = sql.circuit_events(None if key is None else valid_key(key), limit)
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


# -- rows to values -----------------------------------------------------------------------


def someone_elses_probe(row: Any, actor: str | None) -> bool:
    """A half-open circuit is decided by its probe: other actors' outcomes don't count."""
    return (
        CircuitStatus(row.state) is CircuitStatus.HALF_OPEN
        and actor is not None
        and row.probe_owner is not None
        and row.probe_owner != actor
    )


def valid_key(key: object) -> str:
    """``key`` checked as a circuit key (text that fits the key column)."""
    return check.text("key", key, max_length=CIRCUIT_KEY_LENGTH)


def counters_of(row: Any) -> CircuitCounters:
    """A circuit row's counters, as :mod:`retryqueue.breaker_policy` takes them."""
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


def pristine(row: Any) -> bool:
    """A closed circuit with no failure to forget: a success changes nothing."""
    return CircuitStatus(row.state) is CircuitStatus.CLOSED and row.consecutive_failures == 0


def transition_of(row: Any, step: Step, previous: Iterable[Transition] = ()) -> Transition:
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


def state_of(row: Any) -> CircuitState:
    """A circuit row as a :class:`CircuitState`."""
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
