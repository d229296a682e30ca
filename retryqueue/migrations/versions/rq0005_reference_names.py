"""The reference script's own names and comments on databases made by an earlier rq0001.

An earlier version of rq0001 guessed some object names the reference script does not use.
rq0001 now creates the reference objects exactly; this revision brings a database created
by the earlier rq0001 to the same state. Where a name is already the reference one (a
database adopted from the script, or created by today's rq0001) nothing happens:

- indexes ``idx_retry_queue_locked`` -> ``idx_retry_queue_locked_by`` and
  ``idx_retry_queue_expires_at`` -> ``idx_retry_queue_expired`` (rq0003 already dropped
  ``idx_retry_queue_priority``, the guessed name of ``idx_retry_queue_priority_status``);
- PostgreSQL: primary keys ``pk_daz_retry_queue`` -> ``daz_retry_queue_pkey`` and
  ``pk_daz_retry_history`` -> ``daz_retry_history_pkey``; PostgreSQL and MariaDB: check
  ``ck_daz_retry_queue_ck_daz_retry_queue_priority_range`` ->
  ``daz_retry_queue_priority_check`` (SQLite cannot rename a constraint without copying the
  table, and nothing refers to these names there; MariaDB calls every primary key PRIMARY);
- the reference comments on ``daz_retry_queue`` and its columns ``event_id``, ``priority``
  and ``backoff_multiplier`` (PostgreSQL and MariaDB; SQLite has no comments).

It looks at the database, so offline (``retryqueue db sql``) it renders nothing. The
downgrade changes nothing: the reference names are what rq0001 creates, valid for every
earlier revision. Frozen in time: it never imports the models.

Revision ID: rq0005
Revises: rq0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "rq0005"
down_revision: str | None = "rq0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUE = "daz_retry_queue"
HISTORY = "daz_retry_history"
QUEUE_COMMENT = "Main retry queue for failed operations with exponential backoff support"
PRIORITY_RANGE = "priority >= 1 AND priority <= 10"
# (guessed name, reference name, columns, partial-index condition)
INDEXES = (
    (
        "idx_retry_queue_locked",
        "idx_retry_queue_locked_by",
        ("locked_by", "locked_at"),
        "locked_by IS NOT NULL",
    ),
    (
        "idx_retry_queue_expires_at",
        "idx_retry_queue_expired",
        ("expires_at",),
        "status NOT IN ('completed', 'dead_letter')",
    ),
)
PRIMARY_KEYS = (
    (QUEUE, "pk_daz_retry_queue", "daz_retry_queue_pkey"),
    (HISTORY, "pk_daz_retry_history", "daz_retry_history_pkey"),
)
GUESSED_CHECK = "ck_daz_retry_queue_ck_daz_retry_queue_priority_range"
REFERENCE_CHECK = "daz_retry_queue_priority_check"


def _dialect() -> str:
    return op.get_context().dialect.name


def _column_comments() -> tuple[tuple[str, str, sa.types.TypeEngine[Any], str], ...]:
    """(column, comment, type, server default) of the commented columns."""
    uuid_default = (
        "(replace(uuid(), '-', ''))" if _dialect() in ("mysql", "mariadb") else "gen_random_uuid()"
    )
    return (
        (
            "event_id",
            "Unique identifier for the event, useful for deduplication",
            sa.Uuid(),
            uuid_default,
        ),
        ("priority", "Priority level 1-10, where 10 is highest priority", sa.Integer(), "5"),
        (
            "backoff_multiplier",
            "Multiplier for exponential backoff calculation",
            sa.Numeric(3, 2),
            "2.0",
        ),
    )


def upgrade() -> None:
    if op.get_context().as_sql:
        return  # the renames depend on what the database holds
    inspector = sa.inspect(op.get_bind())
    _rename_indexes({index["name"] for index in inspector.get_indexes(QUEUE)})
    if _dialect() == "postgresql":
        _rename_postgresql_constraints()
    elif _dialect() in ("mysql", "mariadb"):
        _rename_mariadb_check({check["name"] for check in inspector.get_check_constraints(QUEUE)})
    if _dialect() != "sqlite":
        _comment(inspector)


def _rename_indexes(present: set[str | None]) -> None:
    for guessed, reference, columns, condition in INDEXES:
        if guessed not in present or reference in present:
            continue
        if _dialect() == "postgresql":
            op.execute(f"ALTER INDEX {guessed} RENAME TO {reference}")
        elif _dialect() in ("mysql", "mariadb"):
            op.execute(f"ALTER TABLE {QUEUE} RENAME INDEX {guessed} TO {reference}")
        else:  # SQLite cannot rename an index: build the same one under its name
            op.drop_index(guessed, table_name=QUEUE)
            op.create_index(reference, QUEUE, list(columns), sqlite_where=sa.text(condition))


def _rename_postgresql_constraints() -> None:
    names = set(
        op.get_bind()
        .execute(
            sa.text(
                "SELECT conname FROM pg_constraint "
                "WHERE conrelid IN (to_regclass(:queue), to_regclass(:history))"
            ),
            {"queue": QUEUE, "history": HISTORY},
        )
        .scalars()
    )
    for table, guessed, reference in (*PRIMARY_KEYS, (QUEUE, GUESSED_CHECK, REFERENCE_CHECK)):
        if guessed in names and reference not in names:
            op.execute(f"ALTER TABLE {table} RENAME CONSTRAINT {guessed} TO {reference}")


def _rename_mariadb_check(present: set[str | None]) -> None:
    if GUESSED_CHECK in present and REFERENCE_CHECK not in present:
        op.execute(
            f"ALTER TABLE {QUEUE} DROP CONSTRAINT {GUESSED_CHECK}, "
            f"ADD CONSTRAINT {REFERENCE_CHECK} CHECK ({PRIORITY_RANGE})"
        )


def _comment(inspector: sa.Inspector) -> None:
    if (inspector.get_table_comment(QUEUE).get("text") or None) != QUEUE_COMMENT:
        op.create_table_comment(QUEUE, QUEUE_COMMENT)
    existing = {column["name"]: column.get("comment") for column in inspector.get_columns(QUEUE)}
    for name, comment, type_, default in _column_comments():
        if existing.get(name) != comment:
            op.alter_column(
                QUEUE,
                name,
                comment=comment,
                existing_type=type_,
                existing_nullable=False,
                existing_server_default=sa.text(default),
                existing_comment=existing.get(name),
            )


def downgrade() -> None:
    """Nothing to undo: the reference names are valid for every earlier revision."""
