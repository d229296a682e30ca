"""What retryqueue adds: a lease token per acquisition, idempotent enqueue on event_id.

- ``lease_token``: a fresh UUID written by every acquisition. complete/fail/heartbeat
  check it, so a worker whose lock expired and whose item was acquired again — even by a
  worker reusing the same worker_id — changes nothing.
- a unique index on ``event_id``: enqueue with a known event_id is a no-op. A database
  holding duplicate event_ids must resolve them before this upgrade.

Revision ID: rq0002
Revises: rq0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "rq0002"
down_revision: str | None = "rq0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("daz_retry_queue") as batch:
        batch.add_column(sa.Column("lease_token", sa.Uuid(), nullable=True))
    op.create_index("uq_retry_queue_event_id", "daz_retry_queue", ["event_id"], unique=True)


def downgrade() -> None:
    op.drop_index("uq_retry_queue_event_id", table_name="daz_retry_queue")
    with op.batch_alter_table("daz_retry_queue") as batch:
        batch.drop_column("lease_token")
