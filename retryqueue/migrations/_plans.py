"""What a migration command would do, found before doing it (for confirmations and hints)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from retryqueue.errors import MigrationError, database_error

__all__ = ["DowngradePlan", "plan_downgrade", "versions_recorded"]

_CREATE_TABLE = re.compile(r"CREATE TABLE [`\"]?(\w+)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class DowngradePlan:
    """The revisions a downgrade would undo (newest first) and the tables it would drop.

    ``rows`` maps each table the downgrade drops, and that exists, to its row count.
    """

    revisions: tuple[str, ...]
    rows: dict[str, int]

    @property
    def rows_lost(self) -> int:
        """How many rows the dropped tables hold."""
        return sum(self.rows.values())


def plan_downgrade(
    engine: Engine,
    script: ScriptDirectory,
    revision: str,
    heads: list[str],
    render_sql: Callable[[str, str, str | None], str],
    version_table: str,
) -> DowngradePlan:
    """Plan ``downgrade(revision)`` from ``heads`` without running it.

    The tables dropped are those the undone revisions create: their upgrade, rendered
    offline by ``render_sql(dialect, to, from)``, names them.
    """
    try:
        # alembic passes the heads tuple here itself (its annotation says str).
        steps = script._downgrade_revs(revision, tuple(heads))  # type: ignore[arg-type]
    except (CommandError, RevisionError) as exc:
        raise MigrationError(f"cannot downgrade to {revision!r}: {_one_line(exc)}") from exc
    undone = tuple(step.revision.revision for step in steps)
    if not undone:
        return DowngradePlan((), {})
    oldest = script.get_revision(undone[-1])
    start = oldest.down_revision if oldest is not None else None
    if isinstance(start, tuple | list):
        start = start[0] if start else None
    sql = render_sql(engine.dialect.name, undone[0], start)
    created = [t for t in dict.fromkeys(_CREATE_TABLE.findall(sql)) if t != version_table]
    return DowngradePlan(undone, _row_counts(engine, created))


def _row_counts(engine: Engine, tables: list[str]) -> dict[str, int]:
    try:
        with engine.connect() as connection:
            existing = set(inspect(connection).get_table_names())
            quote = connection.dialect.identifier_preparer.quote
            return {
                table: int(
                    connection.execute(text(f"SELECT count(*) FROM {quote(table)}")).scalar_one()
                )
                for table in tables
                if table in existing
            }
    except SQLAlchemyError as exc:
        raise database_error("migration", exc) from exc


def versions_recorded(
    engine: Engine, version_table: str, script: ScriptDirectory
) -> list[str] | None:
    """retryqueue's revisions recorded in ``version_table``; None if there is no such table.

    Revisions of other branches (a host application's) in the same table are left out.
    """
    try:
        with engine.connect() as connection:
            if not inspect(connection).has_table(version_table):
                return None
            quoted = connection.dialect.identifier_preparer.quote(version_table)
            recorded = connection.execute(text(f"SELECT version_num FROM {quoted}")).scalars()
            return sorted(each for each in recorded if _is_ours(script, each))
    except SQLAlchemyError as exc:
        raise database_error("migration", exc) from exc


def _is_ours(script: ScriptDirectory, revision: str) -> bool:
    try:
        return script.get_revision(revision) is not None
    except (CommandError, RevisionError):
        return False


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
