"""Declarative models of the two tables, mirroring the reference PostgreSQL schema.

``daz_retry_queue`` holds one row per item; ``daz_retry_history`` one row per attempt.
Both live on :data:`metadata`, which carries its own naming convention so that the
constraint and index names match the shipped migrations exactly.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Double,
    Enum,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Uuid,
    column,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import conv

from retryqueue.fingerprint import FINGERPRINT_LENGTH
from retryqueue.types import (
    JsonDocument,
    SealedJSON,
    SealedText,
    TagList,
    UTCDateTime,
    random_uuid,
    utc_now,
    utc_now_plus_days,
)

__all__ = [
    "ACTIVE_STATUSES",
    "BINARY_COLLATION",
    "HOURLY_MARKER",
    "TERMINAL_STATUSES",
    "Base",
    "RetryCircuit",
    "RetryCircuitEvent",
    "RetryDashboardAudit",
    "RetryHistory",
    "RetryHourlyOutcome",
    "RetryItem",
    "RetryLimit",
    "RetryStatus",
    "RetryWorker",
    "metadata",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only autoincrements an INTEGER PRIMARY KEY; elsewhere this is BIGSERIAL/BIGINT.
_BigId = BigInteger().with_variant(Integer(), "sqlite")
# Without AUTOINCREMENT, SQLite hands a deleted row's id to the next insert, and history
# rows of a cleaned-up item would then describe a new one. Ids are never reused.
_NEVER_REUSE_IDS = {"sqlite_autoincrement": True}


# -- The reference script's own names and comments (rq0001; rq0005 renames older databases) --
# PostgreSQL's default names, not the naming convention's: a database created by the
# reference script has these, and one created by the library must look the same.
QUEUE_PRIMARY_KEY = "daz_retry_queue_pkey"
HISTORY_PRIMARY_KEY = "daz_retry_history_pkey"
PRIORITY_CHECK = "daz_retry_queue_priority_check"
QUEUE_COMMENT = "Main retry queue for failed operations with exponential backoff support"
EVENT_ID_COMMENT = "Unique identifier for the event, useful for deduplication"
PRIORITY_COMMENT = "Priority level 1-10, where 10 is highest priority"
BACKOFF_MULTIPLIER_COMMENT = "Multiplier for exponential backoff calculation"

# Identifiers compared in SQL (keys, names, worker ids) compare exactly on every backend:
# MySQL/MariaDB would otherwise use the database's collation, by default case- and
# accent-insensitive (utf8mb4_general_ci), so that "Pay" = "pay" (revision rq0007).
BINARY_COLLATION = "utf8mb4_bin"


def _identifier(length: int) -> String:
    variant = mysql.VARCHAR(length, charset="utf8mb4", collation=BINARY_COLLATION)
    return String(length).with_variant(variant, "mysql", "mariadb")


class Base(DeclarativeBase):
    """Declarative base of retryqueue's models, bound to :data:`metadata`."""

    metadata = metadata


class RetryStatus(enum.StrEnum):
    """The lifecycle states of a queue item (PostgreSQL enum type ``retry_status``)."""

    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    DEAD_LETTER = "dead_letter"


ACTIVE_STATUSES: tuple[RetryStatus, ...] = (RetryStatus.PENDING, RetryStatus.PROCESSING)
TERMINAL_STATUSES: tuple[RetryStatus, ...] = (
    RetryStatus.COMPLETED,
    RetryStatus.FAILED,
    RetryStatus.DEAD_LETTER,
)

retry_status_type = Enum(
    RetryStatus,
    name="retry_status",
    values_callable=lambda members: [member.value for member in members],
    validate_strings=True,
    create_constraint=True,
    length=20,
)


class RetryItem(Base):
    """One item of the retry queue (table ``daz_retry_queue``)."""

    __tablename__ = "daz_retry_queue"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(),
        nullable=False,
        default=uuid.uuid4,
        server_default=random_uuid(),
        comment=EVENT_ID_COMMENT,
    )
    event_type: Mapped[str] = mapped_column(_identifier(255), nullable=False)
    channel_name: Mapped[str | None] = mapped_column(_identifier(255))
    plugin_name: Mapped[str | None] = mapped_column(_identifier(255))
    event_data: Mapped[Any] = mapped_column(SealedJSON(), nullable=False)
    event_metadata: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument())
    retry_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    max_retries: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("3"))
    retry_delay_seconds: Mapped[int] = mapped_column(
        Integer, nullable=False, server_default=text("60")
    )
    backoff_multiplier: Mapped[float] = mapped_column(
        Numeric(3, 2, asdecimal=False),
        nullable=False,
        server_default=text("2.0"),
        comment=BACKOFF_MULTIPLIER_COMMENT,
    )
    status: Mapped[RetryStatus] = mapped_column(
        retry_status_type, nullable=False, server_default=RetryStatus.PENDING.value
    )
    error_message: Mapped[str | None] = mapped_column(SealedText())
    last_error_code: Mapped[str | None] = mapped_column(_identifier(50))
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=utc_now()
    )
    next_retry_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=utc_now()
    )
    last_attempted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=utc_now_plus_days(7)
    )
    locked_by: Mapped[str | None] = mapped_column(_identifier(255))
    locked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    priority: Mapped[int] = mapped_column(
        Integer, nullable=False, server_default=text("5"), comment=PRIORITY_COMMENT
    )
    correlation_id: Mapped[str | None] = mapped_column(_identifier(255))
    tags: Mapped[list[str] | None] = mapped_column(TagList())
    # Added by retryqueue (revision 0002): a fresh token per acquisition fences stale workers.
    lease_token: Mapped[uuid.UUID | None] = mapped_column(Uuid())
    # Added by retryqueue (revision 0006): when this claim's lock expires, set at claim and
    # by every heartbeat from the holder's lock_timeout. NULL on rows locked before rq0006.
    lock_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Added by retryqueue (revision 0008): the last failure's group key (retryqueue.fingerprint).
    error_fingerprint: Mapped[str | None] = mapped_column(String(FINGERPRINT_LENGTH))
    # Added by retryqueue (revision 0009): no retry is scheduled after this time (None: no
    # deadline, max_retries alone decides). Nullable, so the reference schema adopts it.
    retry_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        PrimaryKeyConstraint("id", name=QUEUE_PRIMARY_KEY),
        CheckConstraint("priority >= 1 AND priority <= 10", name=conv(PRIORITY_CHECK)),
        Index(
            "idx_retry_queue_status_next_retry",
            "status",
            "next_retry_at",
            postgresql_where=text("status IN ('pending', 'processing')"),
            sqlite_where=text("status IN ('pending', 'processing')"),
        ),
        Index("idx_retry_queue_channel_status", "channel_name", "status"),
        Index("idx_retry_queue_plugin_status", "plugin_name", "status"),
        Index(
            "idx_retry_queue_correlation_id",
            "correlation_id",
            postgresql_where=text("correlation_id IS NOT NULL"),
            sqlite_where=text("correlation_id IS NOT NULL"),
        ),
        Index("idx_retry_queue_event_type", "event_type"),
        Index("idx_retry_queue_created_at", "created_at"),
        # Added by retryqueue (revision 0003, replacing idx_retry_queue_priority_status): serves the
        # claim query's filter and order exactly, so claiming never sorts the backlog.
        Index(
            "idx_retry_queue_claim",
            column("priority").desc(),
            "next_retry_at",
            "id",
            postgresql_where=text("status = 'pending' AND locked_by IS NULL"),
            sqlite_where=text("status = 'pending' AND locked_by IS NULL"),
        ),
        Index(
            "idx_retry_queue_locked_by",
            "locked_by",
            "locked_at",
            postgresql_where=text("locked_by IS NOT NULL"),
            sqlite_where=text("locked_by IS NOT NULL"),
        ),
        # Added by retryqueue (revision 0006): serves the stale-lock reclaim.
        Index(
            "idx_retry_queue_lock_expires",
            "lock_expires_at",
            postgresql_where=text("status = 'processing'"),
            sqlite_where=text("status = 'processing'"),
        ),
        Index(
            "idx_retry_queue_tags",
            "tags",
            postgresql_using="gin",
            postgresql_where=text("tags IS NOT NULL"),
            sqlite_where=text("tags IS NOT NULL"),
            # MySQL/MariaDB cannot index a JSON column: no tags index there.
        ).ddl_if(dialect=("postgresql", "sqlite")),  # type: ignore[arg-type]  # tuple: documented
        Index(
            "idx_retry_queue_expired",
            "expires_at",
            postgresql_where=text("status NOT IN ('completed', 'dead_letter')"),
            sqlite_where=text("status NOT IN ('completed', 'dead_letter')"),
        ),
        # Added by retryqueue (revision 0002): idempotent enqueue on event_id.
        Index("uq_retry_queue_event_id", "event_id", unique=True),
        # Added by retryqueue (revision 0008): dead letters grouped by error, and one group's
        # items in id order.
        Index("idx_retry_queue_status_fingerprint", "status", "error_fingerprint", "id"),
        # Added by retryqueue (revision 0013): the dead-letter groups read from this index
        # alone (an index-only scan of the dead letters, never of the whole queue).
        Index(
            "idx_retry_queue_dead_letter_groups",
            "last_error_code",
            "error_fingerprint",
            "plugin_name",
            "last_attempted_at",
            "created_at",
            "id",
            postgresql_where=text("status = 'dead_letter'"),
            sqlite_where=text("status = 'dead_letter'"),
            # MySQL/MariaDB have no partial index: a full one would tax every write.
        ).ddl_if(dialect=("postgresql", "sqlite")),  # type: ignore[arg-type]  # tuple: documented
        {**_NEVER_REUSE_IDS, "comment": QUEUE_COMMENT},
    )

    def __repr__(self) -> str:
        return (
            f"<RetryItem id={self.id} event_type={self.event_type!r} "
            f"status={self.status.value if self.status else None}>"
        )


class RetryHistory(Base):
    """One attempt (or replay) of a queue item (table ``daz_retry_history``).

    There is deliberately no foreign key: history outlives the items it describes (cleanup
    keeps it for twice the item retention).
    """

    __tablename__ = "daz_retry_history"

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    retry_queue_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid(), nullable=False)
    attempt_number: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(50), nullable=False)
    error_message: Mapped[str | None] = mapped_column(SealedText())
    error_code: Mapped[str | None] = mapped_column(_identifier(50))
    worker_id: Mapped[str | None] = mapped_column(_identifier(255))
    attempted_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), nullable=False, server_default=utc_now()
    )
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    # Added by retryqueue (revision 0008): error forensics of a failed attempt.
    error_fingerprint: Mapped[str | None] = mapped_column(String(FINGERPRINT_LENGTH))
    exception_type: Mapped[str | None] = mapped_column(String(255))
    error_traceback: Mapped[str | None] = mapped_column(SealedText())

    __table_args__ = (
        Index("idx_retry_history_queue_id", "retry_queue_id"),
        Index("idx_retry_history_fingerprint", "error_fingerprint", "attempted_at"),
        Index("idx_retry_history_event_id", "event_id"),
        Index("idx_retry_history_attempted_at", "attempted_at"),
        PrimaryKeyConstraint("id", name=HISTORY_PRIMARY_KEY),
        _NEVER_REUSE_IDS,
    )

    def __repr__(self) -> str:
        return (
            f"<RetryHistory id={self.id} item={self.retry_queue_id} "
            f"attempt={self.attempt_number} status={self.status!r}>"
        )


# Revision 0004: circuit breaker state, one row per key, and the audit trail of transitions.
# A key is a plugin_name, or "plugin_name:event_type": 255 + 1 + 255 characters at most.
CIRCUIT_KEY_LENGTH = 511


class RetryCircuit(Base):
    """The circuit breaker state of one key (table ``daz_retry_circuits``).

    Written only by :mod:`retryqueue.circuits`; see :mod:`retryqueue.breaker_policy` for
    the meaning of the counters. A key without a row is closed.
    """

    __tablename__ = "daz_retry_circuits"

    circuit_key: Mapped[str] = mapped_column(_identifier(CIRCUIT_KEY_LENGTH), primary_key=True)
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
    probe_owner: Mapped[str | None] = mapped_column(_identifier(255))
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

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
    circuit_key: Mapped[str] = mapped_column(_identifier(CIRCUIT_KEY_LENGTH), nullable=False)
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
        _NEVER_REUSE_IDS,
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

    limit_key: Mapped[str] = mapped_column(_identifier(CIRCUIT_KEY_LENGTH), primary_key=True)
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

    id: Mapped[int] = mapped_column(_BigId, primary_key=True, autoincrement=True)
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
        _NEVER_REUSE_IDS,
    )


WORKER_DEAD_AFTER_SECONDS = 600.0
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

HOURLY_MARKER = "*"
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
    plugin_name: Mapped[str] = mapped_column(_identifier(255), nullable=False)
    outcome: Mapped[str] = mapped_column(String(50), nullable=False)
    attempts: Mapped[int] = mapped_column(BigInteger, nullable=False)

    __table_args__ = (PrimaryKeyConstraint("hour", "plugin_name", "outcome"),)
