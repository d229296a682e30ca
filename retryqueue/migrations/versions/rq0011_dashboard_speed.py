"""Dashboard speed: attempts per closed hour (``daz_retry_hourly``), and an index for the
dead-letter groups.

``daz_retry_hourly`` holds, per closed UTC hour, plugin and outcome (history status), how
many attempts there were; one row per hour with outcome ``*`` marks the hour as rolled up.
The dashboard fills it from history the first time it needs an hour, so its charts read a
few hundred rows instead of every attempt of the last day.

``idx_retry_queue_dead_letter_groups`` (PostgreSQL and SQLite: partial, dead letters only)
holds every column the dead-letter groups read, so they never visit the table. MySQL and
MariaDB have no partial indexes and do without it. Frozen in time: it never imports the
models.

Revision ID: rq0011
Revises: rq0010
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "rq0011"
down_revision: str | None = "rq0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEAD_LETTERS = "status = 'dead_letter'"
GROUPS_INDEX = "idx_retry_queue_dead_letter_groups"


def _dialect() -> str:
    return op.get_context().dialect.name


def _timestamp() -> sa.types.TypeEngine[Any]:
    if _dialect() in ("mysql", "mariadb"):
        from sqlalchemy.dialects import mysql

        return mysql.DATETIME(fsp=6)
    return sa.DateTime(timezone=_dialect() == "postgresql")


def _identifier(length: int) -> sa.types.TypeEngine[Any]:
    if _dialect() in ("mysql", "mariadb"):
        from sqlalchemy.dialects import mysql

        return mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin")
    return sa.String(length)


def upgrade() -> None:
    op.create_table(
        "daz_retry_hourly",
        sa.Column("hour", _timestamp(), nullable=False),
        sa.Column("plugin_name", _identifier(255), nullable=False),
        sa.Column("outcome", sa.String(50), nullable=False),
        sa.Column("attempts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("hour", "plugin_name", "outcome", name="pk_daz_retry_hourly"),
    )
    if _dialect() in ("postgresql", "sqlite"):
        op.create_index(
            GROUPS_INDEX,
            "daz_retry_queue",
            [
                "last_error_code",
                "error_fingerprint",
                "plugin_name",
                "last_attempted_at",
                "created_at",
                "id",
            ],
            postgresql_where=sa.text(DEAD_LETTERS),
            sqlite_where=sa.text(DEAD_LETTERS),
        )


def downgrade() -> None:
    if _dialect() in ("postgresql", "sqlite"):
        op.drop_index(GROUPS_INDEX, table_name="daz_retry_queue")
    op.drop_table("daz_retry_hourly")
