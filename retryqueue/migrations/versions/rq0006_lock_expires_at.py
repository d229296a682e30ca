"""Per-claim lock expiry: ``lock_expires_at``.

A claim's lock used to expire when ``locked_at`` was older than the *reclaiming* worker's
lock_timeout, so a worker configured with 60 s reclaimed the live items of a worker
running with 3600 s. Now every claim and every heartbeat writes ``lock_expires_at`` from
the holder's own lock_timeout, and stale reclaim compares against it. Rows locked before
this revision have it NULL; they keep the old rule (locked_at + the reclaimer's timeout).

Revision ID: rq0006
Revises: rq0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "rq0006"
down_revision: str | None = "rq0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PROCESSING = "status = 'processing'"


def _timestamp() -> sa.types.TypeEngine[Any]:
    name = op.get_context().dialect.name
    if name in ("mysql", "mariadb"):
        from sqlalchemy.dialects import mysql

        return mysql.DATETIME(fsp=6)
    return sa.DateTime(timezone=name == "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("daz_retry_queue") as batch:
        batch.add_column(sa.Column("lock_expires_at", _timestamp(), nullable=True))
    op.create_index(
        "idx_retry_queue_lock_expires",
        "daz_retry_queue",
        ["lock_expires_at"],
        postgresql_where=sa.text(PROCESSING),
        sqlite_where=sa.text(PROCESSING),
    )


def downgrade() -> None:
    op.drop_index("idx_retry_queue_lock_expires", table_name="daz_retry_queue")
    with op.batch_alter_table("daz_retry_queue") as batch:
        batch.drop_column("lock_expires_at")
