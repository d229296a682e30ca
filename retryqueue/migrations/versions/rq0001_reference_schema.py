"""The reference schema: daz_retry_queue, daz_retry_history, the retry_status enum.

This is the shape existing deployments already have (created by the hand-written
PostgreSQL script), object for object: the same index, primary key and check constraint
names (PostgreSQL's defaults where the script names nothing) and the same comments. Such a
database adopts retryqueue by stamping this revision and upgrading from it. (Databases
created by an earlier version of this revision, which guessed some names, are renamed by
rq0005.) The script's functions and views are not created: the library does not use them.
Frozen in time: it never imports the models.

Revision ID: rq0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "rq0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = ("retryqueue",)
depends_on: str | Sequence[str] | None = None

STATUSES = ("pending", "processing", "completed", "failed", "dead_letter")
QUEUE_COMMENT = "Main retry queue for failed operations with exponential backoff support"


def _dialect() -> str:
    return op.get_context().dialect.name


def _defaults() -> dict[str, str]:
    """Server defaults for the columns whose expression differs per backend."""
    name = _dialect()
    if name == "postgresql":
        return {
            "uuid": "gen_random_uuid()",
            "now": "now()",
            "week": "(now() + interval '7 days')",
        }
    if name in ("mysql", "mariadb"):
        return {
            "uuid": "(replace(uuid(), '-', ''))",
            # UTC whatever the session time zone (CURRENT_TIMESTAMP follows it).
            "now": "(UTC_TIMESTAMP(6))",
            "week": "(UTC_TIMESTAMP(6) + INTERVAL 7 DAY)",
        }
    return {
        "uuid": "(lower(hex(randomblob(16))))",
        "now": "CURRENT_TIMESTAMP",
        "week": "(datetime('now', '+7 days'))",
    }


def _timestamp() -> sa.types.TypeEngine[Any]:
    if _dialect() in ("mysql", "mariadb"):
        from sqlalchemy.dialects import mysql

        return mysql.DATETIME(fsp=6)
    return sa.DateTime(timezone=_dialect() == "postgresql")


def _json() -> sa.types.TypeEngine[Any]:
    return postgresql.JSONB() if _dialect() == "postgresql" else sa.JSON()


def _big_id() -> sa.types.TypeEngine[int]:
    return sa.Integer() if _dialect() == "sqlite" else sa.BigInteger()


def upgrade() -> None:
    defaults = _defaults()
    status = sa.Enum(*STATUSES, name="retry_status", create_constraint=True, length=20)
    op.create_table(
        "daz_retry_queue",
        sa.Column("id", _big_id(), primary_key=True, autoincrement=True),
        sa.Column(
            "event_id",
            sa.Uuid(),
            nullable=False,
            server_default=sa.text(defaults["uuid"]),
            comment="Unique identifier for the event, useful for deduplication",
        ),
        sa.Column("event_type", sa.String(255), nullable=False),
        sa.Column("channel_name", sa.String(255)),
        sa.Column("plugin_name", sa.String(255)),
        sa.Column("event_data", _json(), nullable=False),
        sa.Column("event_metadata", _json()),
        sa.Column("retry_count", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("max_retries", sa.Integer(), nullable=False, server_default=sa.text("3")),
        sa.Column(
            "retry_delay_seconds", sa.Integer(), nullable=False, server_default=sa.text("60")
        ),
        sa.Column(
            "backoff_multiplier",
            sa.Numeric(3, 2),
            nullable=False,
            server_default=sa.text("2.0"),
            comment="Multiplier for exponential backoff calculation",
        ),
        sa.Column("status", status, nullable=False, server_default="pending"),
        sa.Column("error_message", sa.Text()),
        sa.Column("last_error_code", sa.String(50)),
        sa.Column(
            "created_at", _timestamp(), nullable=False, server_default=sa.text(defaults["now"])
        ),
        sa.Column(
            "next_retry_at", _timestamp(), nullable=False, server_default=sa.text(defaults["now"])
        ),
        sa.Column("last_attempted_at", _timestamp()),
        sa.Column("completed_at", _timestamp()),
        sa.Column(
            "expires_at", _timestamp(), nullable=False, server_default=sa.text(defaults["week"])
        ),
        sa.Column("locked_by", sa.String(255)),
        sa.Column("locked_at", _timestamp()),
        sa.Column(
            "priority",
            sa.Integer(),
            nullable=False,
            server_default=sa.text("5"),
            comment="Priority level 1-10, where 10 is highest priority",
        ),
        sa.Column("correlation_id", sa.String(255)),
        sa.Column("tags", postgresql.ARRAY(sa.Text()) if _dialect() == "postgresql" else sa.JSON()),
        sa.PrimaryKeyConstraint("id", name=op.f("daz_retry_queue_pkey")),
        # op.f: the name as is, not run through the application's naming convention.
        sa.CheckConstraint(
            "priority >= 1 AND priority <= 10", name=op.f("daz_retry_queue_priority_check")
        ),
        comment=QUEUE_COMMENT,
        # SQLite would otherwise reuse a deleted row's id (and confuse its history).
        sqlite_autoincrement=True,
    )
    _queue_indexes()
    op.create_table(
        "daz_retry_history",
        sa.Column("id", _big_id(), primary_key=True, autoincrement=True),
        sa.Column("retry_queue_id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("attempt_number", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(50), nullable=False),
        sa.Column("error_message", sa.Text()),
        sa.Column("error_code", sa.String(50)),
        sa.Column("worker_id", sa.String(255)),
        sa.Column(
            "attempted_at", _timestamp(), nullable=False, server_default=sa.text(defaults["now"])
        ),
        sa.Column("duration_ms", sa.Integer()),
        sa.PrimaryKeyConstraint("id", name=op.f("daz_retry_history_pkey")),
        sqlite_autoincrement=True,
    )
    op.create_index("idx_retry_history_queue_id", "daz_retry_history", ["retry_queue_id"])
    op.create_index("idx_retry_history_event_id", "daz_retry_history", ["event_id"])
    op.create_index("idx_retry_history_attempted_at", "daz_retry_history", ["attempted_at"])


def _partial(condition: str) -> dict[str, Any]:
    return {"postgresql_where": sa.text(condition), "sqlite_where": sa.text(condition)}


def _queue_indexes() -> None:
    table = "daz_retry_queue"
    op.create_index(
        "idx_retry_queue_status_next_retry",
        table,
        ["status", "next_retry_at"],
        **_partial("status IN ('pending', 'processing')"),
    )
    op.create_index("idx_retry_queue_channel_status", table, ["channel_name", "status"])
    op.create_index("idx_retry_queue_plugin_status", table, ["plugin_name", "status"])
    op.create_index(
        "idx_retry_queue_correlation_id",
        table,
        ["correlation_id"],
        **_partial("correlation_id IS NOT NULL"),
    )
    op.create_index("idx_retry_queue_event_type", table, ["event_type"])
    op.create_index("idx_retry_queue_created_at", table, ["created_at"])
    op.create_index(
        "idx_retry_queue_priority_status",
        table,
        [sa.text("priority DESC"), "status", "next_retry_at"],
        **_partial("status = 'pending'"),
    )
    op.create_index(
        "idx_retry_queue_locked_by",
        table,
        ["locked_by", "locked_at"],
        **_partial("locked_by IS NOT NULL"),
    )
    if _dialect() not in ("mysql", "mariadb"):
        # MySQL/MariaDB cannot index a JSON column (only generated columns over it).
        op.create_index(
            "idx_retry_queue_tags",
            table,
            ["tags"],
            postgresql_using="gin",
            **_partial("tags IS NOT NULL"),
        )
    op.create_index(
        "idx_retry_queue_expired",
        table,
        ["expires_at"],
        **_partial("status NOT IN ('completed', 'dead_letter')"),
    )


# What the reference script creates besides the tables; dropped with them (its rollback
# script did the same), since the views would block the drop and the functions would be
# left pointing at nothing.
SCRIPT_VIEWS = ("daz_retry_queue_alerts", "daz_retry_queue_stats")
SCRIPT_FUNCTIONS = (
    "acquire_retry_items",
    "complete_retry_item",
    "fail_retry_item",
    "calculate_next_retry",
    "cleanup_retry_queue",
)


def downgrade() -> None:
    if _dialect() == "postgresql":
        for view in SCRIPT_VIEWS:
            op.execute(f"DROP VIEW IF EXISTS {view}")
        for function in SCRIPT_FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {function}")
    op.drop_table("daz_retry_history")
    op.drop_table("daz_retry_queue")
    if _dialect() == "postgresql":
        sa.Enum(name="retry_status").drop(op.get_bind(), checkfirst=True)
