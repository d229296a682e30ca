"""Circuit breaker state and its audit trail.

``daz_retry_circuits`` holds one row per breaker key (a plugin, or a plugin and event
type) that has ever failed: its state (closed, open, half_open), failure counters, when
it may probe again and who holds the probe. ``daz_retry_circuit_events`` records every
transition. Nothing in the queue tables changes. Frozen in time: it never imports the
models.

Revision ID: rq0004
Revises: rq0003
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "rq0004"
down_revision: str | None = "rq0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY_LENGTH = 511  # plugin_name (255) + ":" + event_type (255)


def _dialect() -> str:
    return op.get_context().dialect.name


def _now() -> sa.TextClause:
    name = _dialect()
    if name == "postgresql":
        return sa.text("now()")
    if name in ("mysql", "mariadb"):
        return sa.text("(UTC_TIMESTAMP(6))")
    return sa.text("CURRENT_TIMESTAMP")


def _timestamp() -> sa.types.TypeEngine[Any]:
    if _dialect() in ("mysql", "mariadb"):
        from sqlalchemy.dialects import mysql

        return mysql.DATETIME(fsp=6)
    return sa.DateTime(timezone=_dialect() == "postgresql")


def _big_id() -> sa.types.TypeEngine[int]:
    return sa.Integer() if _dialect() == "sqlite" else sa.BigInteger()


def _count(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.Integer(), nullable=False, server_default=sa.text("0"))


def upgrade() -> None:
    op.create_table(
        "daz_retry_circuits",
        sa.Column("circuit_key", sa.String(KEY_LENGTH), nullable=False),
        sa.Column("state", sa.String(20), nullable=False, server_default="closed"),
        _count("consecutive_failures"),
        sa.Column("window_started_at", _timestamp()),
        _count("window_attempts"),
        _count("window_failures"),
        _count("previous_attempts"),
        _count("previous_failures"),
        sa.Column("opened_at", _timestamp()),
        sa.Column("open_until", _timestamp()),
        sa.Column("cooldown_seconds", sa.Double(), nullable=False, server_default=sa.text("0")),
        sa.Column("probe_owner", sa.String(255)),
        sa.Column("probe_deadline", _timestamp()),
        sa.Column("reason", sa.String(255)),
        _count("version"),
        sa.Column("updated_at", _timestamp(), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("circuit_key", name="pk_daz_retry_circuits"),
        sa.CheckConstraint(
            "state IN ('closed', 'half_open', 'open')", name="ck_daz_retry_circuits_state_valid"
        ),
    )
    op.create_table(
        "daz_retry_circuit_events",
        sa.Column("id", _big_id(), primary_key=True, autoincrement=True),
        sa.Column("circuit_key", sa.String(KEY_LENGTH), nullable=False),
        sa.Column("from_state", sa.String(20), nullable=False),
        sa.Column("to_state", sa.String(20), nullable=False),
        sa.Column("reason", sa.String(255), nullable=False),
        sa.Column("cooldown_seconds", sa.Double()),
        sa.Column("actor", sa.String(255)),
        sa.Column("occurred_at", _timestamp(), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("id", name="pk_daz_retry_circuit_events"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "idx_retry_circuit_events_key",
        "daz_retry_circuit_events",
        ["circuit_key", "occurred_at"],
    )
    op.create_index(
        "idx_retry_circuit_events_occurred_at", "daz_retry_circuit_events", ["occurred_at"]
    )


def downgrade() -> None:
    op.drop_table("daz_retry_circuit_events")
    op.drop_table("daz_retry_circuits")
