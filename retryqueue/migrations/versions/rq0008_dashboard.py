"""Dashboard: error fingerprints, failure forensics, the audit trail and the worker registry.

``daz_retry_queue.error_fingerprint`` and ``daz_retry_history.error_fingerprint`` hold the
group key of the last (or that attempt's) failure, indexed for the dead-letter groups;
history rows of failed attempts also keep the exception type and a bounded traceback.
``daz_retry_audit`` records every action taken from the dashboard; ``daz_retry_workers``
lists running workers and their heartbeats. Frozen in time: it never imports the models.

Revision ID: rq0008
Revises: rq0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "rq0008"
down_revision: str | None = "rq0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINGERPRINT_LENGTH = 16


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


def _json() -> sa.types.TypeEngine[Any]:
    if _dialect() == "postgresql":
        from sqlalchemy.dialects import postgresql

        return postgresql.JSONB()
    return sa.JSON()


def _big_id() -> sa.types.TypeEngine[int]:
    return sa.Integer() if _dialect() == "sqlite" else sa.BigInteger()


def upgrade() -> None:
    with op.batch_alter_table("daz_retry_queue") as batch:
        batch.add_column(sa.Column("error_fingerprint", sa.String(FINGERPRINT_LENGTH)))
    with op.batch_alter_table("daz_retry_history") as batch:
        batch.add_column(sa.Column("error_fingerprint", sa.String(FINGERPRINT_LENGTH)))
        batch.add_column(sa.Column("exception_type", sa.String(255)))
        batch.add_column(sa.Column("error_traceback", sa.Text()))
    op.create_index(
        "idx_retry_queue_status_fingerprint",
        "daz_retry_queue",
        ["status", "error_fingerprint", "id"],
    )
    op.create_index(
        "idx_retry_history_fingerprint",
        "daz_retry_history",
        ["error_fingerprint", "attempted_at"],
    )
    op.create_table(
        "daz_retry_audit",
        sa.Column("id", _big_id(), primary_key=True, autoincrement=True),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(50), nullable=False),
        sa.Column("selection", _json()),
        sa.Column("requested", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("affected", sa.Integer()),
        sa.Column("detail", sa.String(255)),
        sa.Column("occurred_at", _timestamp(), nullable=False, server_default=_now()),
        sa.Column("finished_at", _timestamp()),
        sa.PrimaryKeyConstraint("id", name="pk_daz_retry_audit"),
        sqlite_autoincrement=True,
    )
    op.create_index("idx_retry_audit_occurred_at", "daz_retry_audit", ["occurred_at"])
    op.create_table(
        "daz_retry_workers",
        sa.Column("worker_id", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("batch_size", sa.Integer(), nullable=False, server_default=sa.text("1")),
        sa.Column("started_at", _timestamp(), nullable=False, server_default=_now()),
        sa.Column("heartbeat_at", _timestamp(), nullable=False, server_default=_now()),
        sa.PrimaryKeyConstraint("worker_id", name="pk_daz_retry_workers"),
    )
    op.create_index("idx_retry_workers_heartbeat_at", "daz_retry_workers", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_table("daz_retry_workers")
    op.drop_table("daz_retry_audit")
    op.drop_index("idx_retry_history_fingerprint", table_name="daz_retry_history")
    op.drop_index("idx_retry_queue_status_fingerprint", table_name="daz_retry_queue")
    with op.batch_alter_table("daz_retry_history") as batch:
        batch.drop_column("error_traceback")
        batch.drop_column("exception_type")
        batch.drop_column("error_fingerprint")
    with op.batch_alter_table("daz_retry_queue") as batch:
        batch.drop_column("error_fingerprint")
