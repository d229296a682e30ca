"""Identifiers compare exactly on MySQL/MariaDB: binary collation on their columns.

MySQL/MariaDB compare strings with the column's collation; a database created with the
server's default (``utf8mb4_general_ci``) made ``Pay`` equal ``pay`` for circuit keys,
plugin and event type filters, worker ids... while PostgreSQL and SQLite compare exactly.
This revision gives those columns ``utf8mb4_bin``. PostgreSQL and SQLite: nothing to do.
Frozen in time: it never imports the models.

Revision ID: rq0007
Revises: rq0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "rq0007"
down_revision: str | None = "rq0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column, length, nullable)
COLUMNS = (
    ("daz_retry_queue", "event_type", 255, False),
    ("daz_retry_queue", "channel_name", 255, True),
    ("daz_retry_queue", "plugin_name", 255, True),
    ("daz_retry_queue", "last_error_code", 50, True),
    ("daz_retry_queue", "locked_by", 255, True),
    ("daz_retry_queue", "correlation_id", 255, True),
    ("daz_retry_history", "error_code", 50, True),
    ("daz_retry_history", "worker_id", 255, True),
    ("daz_retry_circuits", "circuit_key", 511, False),
    ("daz_retry_circuits", "probe_owner", 255, True),
    ("daz_retry_circuit_events", "circuit_key", 511, False),
)


def _alter(collation: str | None) -> None:
    if op.get_context().dialect.name not in ("mysql", "mariadb"):
        return
    from sqlalchemy.dialects import mysql

    for table, name, length, nullable in COLUMNS:
        op.alter_column(
            table,
            name,
            type_=mysql.VARCHAR(length, charset="utf8mb4", collation=collation),
            existing_type=sa.String(length),
            existing_nullable=nullable,
        )


def upgrade() -> None:
    _alter("utf8mb4_bin")


def downgrade() -> None:
    _alter(None)  # the table's default collation again
