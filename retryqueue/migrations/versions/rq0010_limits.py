"""Per-key rate limits and pauses: ``daz_retry_limits``.

One row per key (a plugin, or a plugin and event type, as the circuit breaker's keys)
that has a rate limit (a token bucket: rate per second, burst, the tokens left and when
they were last refilled), a pause (until when, and why), or both; and a counter of the
claims it throttled. Nothing in the queue tables changes. Frozen in time: it never imports
the models.

Revision ID: rq0010
Revises: rq0009
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "rq0010"
down_revision: str | None = "rq0009"
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


def _key() -> sa.types.TypeEngine[str]:
    if _dialect() in ("mysql", "mariadb"):
        from sqlalchemy.dialects import mysql

        return mysql.VARCHAR(KEY_LENGTH, charset="utf8mb4", collation="utf8mb4_bin")
    return sa.String(KEY_LENGTH)


def upgrade() -> None:
    op.create_table(
        "daz_retry_limits",
        sa.Column("limit_key", _key(), nullable=False),
        sa.Column("rate_per_second", sa.Double()),
        sa.Column("burst", sa.Double()),
        sa.Column("tokens", sa.Double(), nullable=False, server_default=sa.text("0")),
        sa.Column("refilled_at", _timestamp()),
        sa.Column("paused_until", _timestamp()),
        sa.Column("pause_reason", sa.String(255)),
        sa.Column("throttled_claims", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("updated_at", _timestamp(), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("limit_key", name="pk_daz_retry_limits"),
    )


def downgrade() -> None:
    op.drop_table("daz_retry_limits")
