"""Circuit breaker state and audit trail (see retryqueue.circuits)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Insert,
    String,
    Table,
    Update,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite

from retryqueue.models import (
    RetryCircuit,
    RetryCircuitEvent,
)
from retryqueue.statements._base import _SYNC_OFF, AnySelect, now_expr

# ---------------------------------------------------------------------------------------
# Circuit breaker (see retryqueue.circuits): one row per key, transitions in an audit table.
# Every write is a compare-and-set on the row's version, so of two workers that read the
# same open circuit past its cool-down, exactly one turns it half-open and owns the probe.

CIRCUIT_COLUMNS = (
    RetryCircuit.circuit_key,
    RetryCircuit.state,
    RetryCircuit.consecutive_failures,
    RetryCircuit.window_started_at,
    RetryCircuit.window_attempts,
    RetryCircuit.window_failures,
    RetryCircuit.previous_attempts,
    RetryCircuit.previous_failures,
    RetryCircuit.opened_at,
    RetryCircuit.open_until,
    RetryCircuit.cooldown_seconds,
    RetryCircuit.probe_owner,
    RetryCircuit.probe_deadline,
    RetryCircuit.reason,
    RetryCircuit.version,
    RetryCircuit.updated_at,
)


def circuits_not_closed(at: datetime | None) -> AnySelect:
    """Circuits that are open or half-open, with now on the chosen clock (the gate's read)."""
    return select(*CIRCUIT_COLUMNS, now_expr(at).label("now")).where(
        RetryCircuit.state != literal_column("'closed'", String())
    )


def circuits_by_key(
    at: datetime | None, keys: Sequence[str], *, lock: bool, skip_locked: bool = False
) -> AnySelect:
    """These keys' circuits (key order), with now; ``lock``: FOR UPDATE, to change them.

    ``skip_locked``: rows another transaction holds are left out instead of waited for.
    """
    stmt = (
        select(*CIRCUIT_COLUMNS, now_expr(at).label("now"))
        .where(RetryCircuit.circuit_key.in_(list(keys)))
        .order_by(RetryCircuit.circuit_key)
    )
    return stmt.with_for_update(skip_locked=skip_locked) if lock else stmt


def database_now(at: datetime | None) -> AnySelect:
    """Now, on the chosen clock."""
    return select(now_expr(at).label("now"))


def all_circuits() -> AnySelect:
    """Every circuit row, by key."""
    return select(*CIRCUIT_COLUMNS).order_by(RetryCircuit.circuit_key)


def insert_circuits(dialect_name: str, at: datetime | None) -> Insert:
    """INSERT of closed circuit rows (executemany of ``circuit_key``), skipping existing keys."""
    table = cast("Table", RetryCircuit.__table__)
    stmt: Any
    if dialect_name == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing(index_elements=["circuit_key"])
    elif dialect_name == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=["circuit_key"])
    else:
        stmt = mysql.insert(table).on_duplicate_key_update(circuit_key=table.c.circuit_key)
    result: Insert = stmt.values(updated_at=now_expr(at))
    return result


def update_circuit(at: datetime | None, key: str, version: int, values: dict[str, Any]) -> Update:
    """Write a circuit's new state if its version is still ``version`` (then bump it).

    The caller checks the row count: 0 means another worker changed the circuit first.
    """
    return (
        update(RetryCircuit)
        .where(RetryCircuit.circuit_key == key, RetryCircuit.version == version)
        .values(**values, version=version + 1, updated_at=now_expr(at))
        .execution_options(**_SYNC_OFF)
    )


def insert_circuit_events(at: datetime | None) -> Insert:
    """INSERT of audit rows (executemany); occurred_at is now on the chosen clock."""
    table = cast("Table", RetryCircuitEvent.__table__)
    return insert(table).values(occurred_at=now_expr(at))


def circuit_events(key: str | None, limit: int) -> AnySelect:
    """The newest audit rows (of one key, or all), newest first."""
    stmt = select(
        RetryCircuitEvent.id,
        RetryCircuitEvent.circuit_key,
        RetryCircuitEvent.from_state,
        RetryCircuitEvent.to_state,
        RetryCircuitEvent.reason,
        RetryCircuitEvent.cooldown_seconds,
        RetryCircuitEvent.actor,
        RetryCircuitEvent.occurred_at,
    )
    if key is not None:
        stmt = stmt.where(RetryCircuitEvent.circuit_key == key)
    return stmt.order_by(RetryCircuitEvent.id.desc()).limit(limit)


def circuit_transition_counts() -> AnySelect:
    """Audit rows counted per (key, to_state), for the metrics exporter."""
    return (
        select(RetryCircuitEvent.circuit_key, RetryCircuitEvent.to_state, func.count())
        .group_by(RetryCircuitEvent.circuit_key, RetryCircuitEvent.to_state)
        .order_by(RetryCircuitEvent.circuit_key, RetryCircuitEvent.to_state)
    )
