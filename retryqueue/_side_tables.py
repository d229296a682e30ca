"""The side tables: circuit breaker state and its transitions, rate limits and pauses, the
dashboard's audit trail, the registry of live workers, and the hourly outcome roll-up.

Each is written by one module of its own (named in the class's docstring) and lives on the
same :data:`~retryqueue.models.metadata` as the two main tables. Import them from
:mod:`retryqueue.models`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Double,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from retryqueue._declarative import BIG_ID, NEVER_REUSE_IDS, Base, identifier
from retryqueue.types import JsonDocument, UTCDateTime, utc_now

__all__ = [
    "CIRCUIT_KEY_LENGTH",
    "HOURLY_MARKER",
    "WORKER_DEAD_AFTER_SECONDS",
    "RetryCircuit",
    "RetryCircuitEvent",
    "RetryDashboardAudit",
    "RetryHourlyOutcome",
    "RetryLimit",
    "RetryWorker",
]


# Revision 0004: circuit breaker state, one row per key, and the audit trail of transitions.
# A key is a plugin_name, or "plugin_name:event_type": 255 + 1 + 255 characters at most.
CIRCUIT_KEY_LENGTH: int = 511


class RetryCircuit(Base):
    """The circuit breaker state of one key (table ``daz_retry_circuits``).

    Written only by :mod:`retryqueue.circuits`; see :mod:`retryqueue.breaker_policy` for
    the meaning of the counters. A key without a row is closed.
    """

    __tablename__ = "daz_retry_circuits"

    circuit_key: Mapped[str] = mapped_column(identifier(CIRCUIT_KEY_LENGTH), primary_key=True)
    state: Mapped[str] = mapped_column(String(20), nullable=False, server_default="closed")
    consecutive_failures: Mapped[int] = mapped_column(
        Integer, nullable=False, server_default=text("0")
    )
    window_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    window_attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    window_failures: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    previous_attempts: Mapped[int] = mapped_column(
        Integer, nullable=False, server_default=text("0")
    )
    previous_failures: Mapped[int] = mapped_column(
        Integer, nullable=False, server_default=text("0")
    )
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    open_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cooldown_seconds: Mapped[float] = mapped_column(
        Double(), nullable=False, server_default=text("0")
    )
    probe_owner: Mapped[str | None] = mapped_column(identifier(255))
    probe_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime())
    reason: Mapped[str | None] = mapped_column(String(255))
    # Bumped by every write: the compare-and-set that hands out exactly one probe.
    version: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=utc_now()
    )

    __table_args__ = (
        CheckConstraint("state IN ('closed', 'half_open', 'open')", name="state_valid"),
    )

    def __repr__(self) -> str:
        return f"<RetryCircuit {self.circuit_key!r} state={self.state!r}>"


class RetryCircuitEvent(Base):
    """One circuit transition, for the audit trail (table ``daz_retry_circuit_events``)."""

    __tablename__ = "daz_retry_circuit_events"

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    circuit_key: Mapped[str] = mapped_column(identifier(CIRCUIT_KEY_LENGTH), nullable=False)
    from_state: Mapped[str] = mapped_column(String(20), nullable=False)
    to_state: Mapped[str] = mapped_column(String(20), nullable=False)
    reason: Mapped[str] = mapped_column(String(255), nullable=False)
    cooldown_seconds: Mapped[float | None] = mapped_column(Double())
    actor: Mapped[str | None] = mapped_column(String(255))
    occurred_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=utc_now()
    )

    __table_args__ = (
        Index("idx_retry_circuit_events_key", "circuit_key", "occurred_at"),
        Index("idx_retry_circuit_events_occurred_at", "occurred_at"),
        NEVER_REUSE_IDS,
    )

    def __repr__(self) -> str:
        return (
            f"<RetryCircuitEvent {self.circuit_key!r} {self.from_state}->{self.to_state} "
            f"({self.reason})>"
        )


# Revision 0010: per-key rate limits and pauses, shared by every worker.


class RetryLimit(Base):
    """A key's rate limit (a token bucket) and/or pause (table ``daz_retry_limits``).

    The key is a plugin_name, or ``plugin_name:event_type`` (the circuit breaker's form).
    ``rate_per_second``/``burst`` are NULL for a key that is only paused; ``tokens`` and
    ``refilled_at`` are the bucket's state, refilled lazily at each claim. Written only by
    :mod:`retryqueue.limits`.
    """

    __tablename__ = "daz_retry_limits"

    limit_key: Mapped[str] = mapped_column(identifier(CIRCUIT_KEY_LENGTH), primary_key=True)
    rate_per_second: Mapped[float | None] = mapped_column(Double())
    burst: Mapped[float | None] = mapped_column(Double())
    tokens: Mapped[float] = mapped_column(Double(), nullable=False, server_default=text("0"))
    refilled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    paused_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    pause_reason: Mapped[str | None] = mapped_column(String(255))
    throttled_claims: Mapped[int] = mapped_column(
        BigInteger(), nullable=False, server_default=text("0")
    )
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=utc_now()
    )

    def __repr__(self) -> str:
        return (
            f"<RetryLimit {self.limit_key!r} rate={self.rate_per_second} burst={self.burst} "
            f"paused_until={self.paused_until}>"
        )


# Revision 0008: the dashboard's audit trail and the registry of live workers.


class RetryDashboardAudit(Base):
    """One administrative action taken from the dashboard (table ``daz_retry_audit``).

    ``selection`` describes what was acted on (a filter, or ids) as JSON; ``requested`` is
    how many items the preview counted, ``affected`` how many the action changed (None
    while it runs).
    """

    __tablename__ = "daz_retry_audit"

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    actor: Mapped[str] = mapped_column(String(255), nullable=False)
    action: Mapped[str] = mapped_column(String(50), nullable=False)
    selection: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument())
    requested: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    affected: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(String(255))
    occurred_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=utc_now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("idx_retry_audit_occurred_at", "occurred_at"),
        NEVER_REUSE_IDS,
    )


WORKER_DEAD_AFTER_SECONDS: float = 600.0
"""A worker silent this long is presumed dead: hidden from listings, deleted by cleanup."""


class RetryWorker(Base):
    """A running worker, registered at start and heartbeating (table ``daz_retry_workers``)."""

    __tablename__ = "daz_retry_workers"

    worker_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    kind: Mapped[str] = mapped_column(String(50), nullable=False)
    concurrency: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("1"))
    batch_size: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("1"))
    started_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=utc_now()
    )
    heartbeat_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=utc_now()
    )

    __table_args__ = (Index("idx_retry_workers_heartbeat_at", "heartbeat_at"),)


# Revision 0013: attempts per closed hour, the dashboard's charts without scanning history.

HOURLY_MARKER: str = "*"
"""The ``outcome`` of the row that marks an hour as rolled up (its count: all attempts)."""


class RetryHourlyOutcome(Base):
    """Attempts of one closed UTC hour per plugin and outcome (table ``daz_retry_hourly``).

    Computed once from ``daz_retry_history`` when the dashboard first needs a closed hour,
    then reused; the current hour is always counted live. ``plugin_name`` is ``""`` for an
    attempt whose item has no plugin or was already cleaned up; ``outcome`` is the history
    status, or :data:`HOURLY_MARKER` on the one row per hour that says it was rolled up.
    Cleanup deletes rows older than twice the retention, like history.
    """

    __tablename__ = "daz_retry_hourly"

    hour: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    plugin_name: Mapped[str] = mapped_column(identifier(255), nullable=False)
    outcome: Mapped[str] = mapped_column(String(50), nullable=False)
    attempts: Mapped[int] = mapped_column(BigInteger, nullable=False)

    __table_args__ = (PrimaryKeyConstraint("hour", "plugin_name", "outcome"),)
