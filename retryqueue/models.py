"""Declarative models of the two tables, mirroring the reference PostgreSQL schema.

``daz_retry_queue`` holds one row per item; ``daz_retry_history`` one row per attempt.
Both live on :data:`metadata`, which carries its own naming convention so that the
constraint and index names match the shipped migrations exactly. The side tables (circuit
breaker, rate limits, dashboard audit, workers, hourly outcomes) are importable from here too.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Enum,
    Index,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Uuid,
    column,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.elements import conv

# This module is the public home of every table: the declarative base (and what the tables
# share) and the side tables are defined in private modules of their own and re-exported here.
from retryqueue._declarative import (
    BIG_ID,
    BINARY_COLLATION,
    NAMING_CONVENTION,
    NEVER_REUSE_IDS,
    Base,
    identifier,
    metadata,
)
from retryqueue._side_tables import (
    CIRCUIT_KEY_LENGTH,
    HOURLY_MARKER,
    WORKER_DEAD_AFTER_SECONDS,
    RetryCircuit,
    RetryCircuitEvent,
    RetryDashboardAudit,
    RetryHourlyOutcome,
    RetryLimit,
    RetryWorker,
)
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
    "CIRCUIT_KEY_LENGTH",
    "HOURLY_MARKER",
    "NAMING_CONVENTION",
    "TERMINAL_STATUSES",
    "WORKER_DEAD_AFTER_SECONDS",
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

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    event_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(),
        nullable=False,
        default=uuid.uuid4,
        server_default=random_uuid(),
        comment=EVENT_ID_COMMENT,
    )
    event_type: Mapped[str] = mapped_column(identifier(255), nullable=False)
    channel_name: Mapped[str | None] = mapped_column(identifier(255))
    plugin_name: Mapped[str | None] = mapped_column(identifier(255))
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
    last_error_code: Mapped[str | None] = mapped_column(identifier(50))
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
    locked_by: Mapped[str | None] = mapped_column(identifier(255))
    locked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    priority: Mapped[int] = mapped_column(
        Integer, nullable=False, server_default=text("5"), comment=PRIORITY_COMMENT
    )
    correlation_id: Mapped[str | None] = mapped_column(identifier(255))
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
        {**NEVER_REUSE_IDS, "comment": QUEUE_COMMENT},
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

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    retry_queue_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid(), nullable=False)
    attempt_number: Mapped[int] = mapped_column(Integer, nullable=False)
    status: Mapped[str] = mapped_column(String(50), nullable=False)
    error_message: Mapped[str | None] = mapped_column(SealedText())
    error_code: Mapped[str | None] = mapped_column(identifier(50))
    worker_id: Mapped[str | None] = mapped_column(identifier(255))
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
        NEVER_REUSE_IDS,
    )

    def __repr__(self) -> str:
        return (
            f"<RetryHistory id={self.id} item={self.retry_queue_id} "
            f"attempt={self.attempt_number} status={self.status!r}>"
        )
