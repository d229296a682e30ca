"""An index that serves the claim query exactly.

The claim takes pending, unlocked items in the order priority DESC, next_retry_at, id.
The reference index ``idx_retry_queue_priority (priority DESC, status, next_retry_at)``
leaves PostgreSQL a sort of every pending row (5.5 ms at 10k pending, 52 ms and a spill to
disk at 100k in the benchmarks); ``idx_retry_queue_claim`` lets it read the first rows in
order (0.1 ms). It replaces the reference index, which nothing else uses.

Revision ID: rq0003
Revises: rq0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "rq0003"
down_revision: str | None = "rq0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CLAIMABLE = "status = 'pending' AND locked_by IS NULL"
PENDING = "status = 'pending'"


def upgrade() -> None:
    op.create_index(
        "idx_retry_queue_claim",
        "daz_retry_queue",
        [sa.text("priority DESC"), "next_retry_at", "id"],
        postgresql_where=sa.text(CLAIMABLE),
        sqlite_where=sa.text(CLAIMABLE),
    )
    op.drop_index("idx_retry_queue_priority", table_name="daz_retry_queue")


def downgrade() -> None:
    op.create_index(
        "idx_retry_queue_priority",
        "daz_retry_queue",
        [sa.text("priority DESC"), "status", "next_retry_at"],
        postgresql_where=sa.text(PENDING),
        sqlite_where=sa.text(PENDING),
    )
    op.drop_index("idx_retry_queue_claim", table_name="daz_retry_queue")
