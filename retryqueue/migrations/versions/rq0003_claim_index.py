"""An index that serves the claim query exactly.

The claim takes pending, unlocked items in the order priority DESC, next_retry_at, id.
The reference index ``idx_retry_queue_priority_status (priority DESC, status, next_retry_at)``
leaves PostgreSQL a sort of every pending row (5.5 ms at 10k pending, 52 ms and a spill to
disk at 100k in the benchmarks); ``idx_retry_queue_claim`` lets it read the first rows in
order (0.1 ms). It replaces the reference index, which nothing else uses (on a database
created by an earlier rq0001 that index is called ``idx_retry_queue_priority``).

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
REFERENCE_INDEX = "idx_retry_queue_priority_status"
GUESSED_INDEX = "idx_retry_queue_priority"  # the name an earlier rq0001 gave it


def upgrade() -> None:
    op.create_index(
        "idx_retry_queue_claim",
        "daz_retry_queue",
        [sa.text("priority DESC"), "next_retry_at", "id"],
        postgresql_where=sa.text(CLAIMABLE),
        sqlite_where=sa.text(CLAIMABLE),
    )
    op.drop_index(_priority_index(), table_name="daz_retry_queue")


def _priority_index() -> str:
    """The reference priority index's name in this database (offline: the reference's)."""
    if op.get_context().as_sql:
        return REFERENCE_INDEX
    names = {index["name"] for index in sa.inspect(op.get_bind()).get_indexes("daz_retry_queue")}
    return GUESSED_INDEX if GUESSED_INDEX in names else REFERENCE_INDEX


def downgrade() -> None:
    op.create_index(
        REFERENCE_INDEX,
        "daz_retry_queue",
        [sa.text("priority DESC"), "status", "next_retry_at"],
        postgresql_where=sa.text(PENDING),
        sqlite_where=sa.text(PENDING),
    )
    op.drop_index("idx_retry_queue_claim", table_name="daz_retry_queue")
