"""Retry deadlines: ``daz_retry_queue.retry_deadline``.

A nullable timestamp: no retry is scheduled after it (the item is dead-lettered with the
reason instead). Rows of the reference schema keep NULL (no deadline), so an adopted
database needs nothing but this column. Frozen in time: it never imports the models.

Revision ID: rq0009
Revises: rq0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "rq0009"
down_revision: str | None = "rq0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp() -> sa.types.TypeEngine[Any]:
    name = op.get_context().dialect.name
    if name in ("mysql", "mariadb"):
        from sqlalchemy.dialects import mysql

        return mysql.DATETIME(fsp=6)
    return sa.DateTime(timezone=name == "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("daz_retry_queue") as batch:
        batch.add_column(sa.Column("retry_deadline", _timestamp(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("daz_retry_queue") as batch:
        batch.drop_column("retry_deadline")
