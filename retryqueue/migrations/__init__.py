"""The schema migrations shipped in the package, and functions to run them.

The revisions live in one folder, ``retryqueue/migrations/versions`` (a revision is just
a file there), on the branch labelled ``retryqueue``. They ship in the wheel as they are;
the repository's top-level ``alembic.ini`` and ``alembic/`` environment run the same folder
with the stock ``alembic`` command. Three ways to use them:

* Applications without alembic of their own: ``retryqueue.migrations.upgrade(engine)``
  (or ``retryqueue db upgrade``). The revision applied is recorded in the table
  ``retryqueue_alembic_version``.
* Applications with alembic: ``version_locations = ... retryqueue:migrations/versions`` in
  their ``alembic.ini``, :func:`include_object` / :func:`include_name` in their ``env.py``,
  and ``alembic upgrade heads``; the revisions then live in the application's own version
  table beside its branches (see :mod:`retryqueue.migrations.host`).
* Opt-in, PostgreSQL only and outside the revisions: :func:`enable_partitioning` turns the
  queue table into monthly partitions (see :mod:`retryqueue.migrations.partitioning`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import SQLAlchemyError

from retryqueue import validation as check
from retryqueue.errors import MigrationError, database_error
from retryqueue.migrations import _plans, _runner, partitioning
from retryqueue.migrations._plans import DowngradePlan
from retryqueue.migrations._runner import context_options, package_path
from retryqueue.migrations.host import (
    VERSION_LOCATION,
    include_name,
    include_object,
    is_retryqueue_table,
    version_location,
)
from retryqueue.migrations.partitioning import (
    PartitioningError,
    create_partitions,
    drop_partitions,
    is_partitioned,
    iter_drop_partitions,
    partitions,
)
from retryqueue.migrations.partitioning import enable as enable_partitioning
from retryqueue.models import metadata

__all__ = [
    "BRANCH",
    "HEAD",
    "HOST_VERSION_TABLE",
    "VERSION_LOCATION",
    "VERSION_TABLE",
    "DowngradePlan",
    "PartitioningError",
    "context_options",
    "create_partitions",
    "current",
    "differences",
    "downgrade",
    "drop_partitions",
    "elsewhere",
    "enable_partitioning",
    "grant_statements",
    "heads",
    "include_name",
    "include_object",
    "is_partitioned",
    "is_retryqueue_table",
    "iter_drop_partitions",
    "make_config",
    "offline_sql",
    "package_path",
    "partitioning",
    "partitions",
    "plan_downgrade",
    "revisions_in",
    "script_directory",
    "stamp",
    "upgrade",
    "version_location",
]

BRANCH = "retryqueue"
HEAD = f"{BRANCH}@head"
VERSION_TABLE = _runner.DEFAULT_VERSION_TABLE
HOST_VERSION_TABLE = "alembic_version"
"""alembic's default version table: where a host application's alembic records ours."""


def make_config(url: str | None = None, *, version_table: str = VERSION_TABLE) -> Config:
    """An alembic Config over the packaged revisions, for alembic's read-only commands.

    ``alembic.command.history``, ``heads`` and ``show`` work with it; running revisions
    goes through :func:`upgrade`, :func:`downgrade` and :func:`stamp` (the package ships
    no ``env.py``).
    """
    config = Config()
    config.set_main_option("script_location", str(package_path()))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", str(package_path()))
    config.set_main_option("version_table", version_table)
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def script_directory() -> ScriptDirectory:
    """The packaged revisions as an alembic ScriptDirectory."""
    return _runner.script()


def heads() -> list[str]:
    """The head revision ids of the packaged revisions (there should be one)."""
    return list(script_directory().get_heads())


@contextmanager
def _migrating(engine: Engine, what: str) -> Iterator[Connection]:
    """A transaction for a migration; alembic's and the database's errors as one line."""
    try:
        with engine.begin() as connection:
            yield connection
    except (CommandError, RevisionError) as exc:
        raise MigrationError(f"{what}: {_one_line(exc)}") from exc
    except SQLAlchemyError as exc:
        raise database_error("migration", exc) from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def upgrade(
    engine: Engine,
    revision: str = HEAD,
    *,
    version_table: str = VERSION_TABLE,
    on_revision: Callable[[str], None] | None = None,
) -> list[str]:
    """Apply the packaged revisions up to ``revision`` (default: the newest).

    Returns the revisions applied, in order (empty when the database was already there).
    ``on_revision`` is called with each revision id as soon as it has been applied (all
    of them still commit together at the end).
    """
    with _migrating(engine, f"cannot upgrade to {revision!r}") as connection:
        applied, _ = _runner.run(
            connection,
            _runner.upgrade_plan(revision),
            destination=revision,
            version_table=version_table,
            on_revision=on_revision,
        )
    return applied


def downgrade(
    engine: Engine,
    revision: str,
    *,
    version_table: str = VERSION_TABLE,
    on_revision: Callable[[str], None] | None = None,
) -> list[str]:
    """Undo revisions down to ``revision``; ``"retryqueue@base"`` removes everything.

    Returns the revisions undone, newest first (empty when there was nothing to undo).
    ``on_revision`` is called with each revision id as soon as it has been undone.
    """
    with _migrating(engine, f"cannot downgrade to {revision!r}") as connection:
        undone, _ = _runner.run(
            connection,
            _runner.downgrade_plan(revision),
            destination=revision,
            version_table=version_table,
            on_revision=on_revision,
        )
    return undone


def stamp(engine: Engine, revision: str, *, version_table: str = VERSION_TABLE) -> None:
    """Record ``revision`` as applied without running it (adopting an existing schema)."""
    with _migrating(engine, f"cannot stamp {revision!r}") as connection:
        _runner.run(
            connection,
            _runner.stamp_plan([revision]),
            destination=(revision,),
            version_table=version_table,
            purge=False,
        )


def revisions_in(engine: Engine, version_table: str) -> list[str] | None:
    """retryqueue's revisions recorded in ``version_table``; None if there is no such table.

    Revisions of other branches (a host application's) in the same table are left out.
    """
    return _plans.versions_recorded(engine, version_table, script_directory())


def elsewhere(engine: Engine, version_table: str = VERSION_TABLE) -> tuple[str, list[str]] | None:
    """Another version table holding retryqueue's revisions, when ``version_table`` holds none.

    A database migrated by a host application's alembic records our revisions in
    ``alembic_version``; one migrated by ``retryqueue db`` in ``retryqueue_alembic_version``.
    Returns ``(table, revisions)`` or None.
    """
    if revisions_in(engine, version_table):
        return None
    for table in (VERSION_TABLE, HOST_VERSION_TABLE):
        if table != version_table and (found := revisions_in(engine, table)):
            return table, found
    return None


def plan_downgrade(
    engine: Engine, revision: str, *, version_table: str = VERSION_TABLE
) -> DowngradePlan:
    """What ``downgrade(engine, revision)`` would undo and which tables (with rows) it drops."""

    def render(dialect: str, to: str, start: str | None) -> str:
        return offline_sql(dialect, to, from_revision=start, version_table=version_table)

    heads = current(engine, version_table=version_table)
    return _plans.plan_downgrade(engine, script_directory(), revision, heads, render, version_table)


def current(engine: Engine, *, version_table: str = VERSION_TABLE) -> list[str]:
    """The revision ids recorded in the database (empty before the first upgrade)."""
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"version_table": version_table})
            return list(context.get_current_heads())
    except SQLAlchemyError as exc:
        raise database_error("migration", exc) from exc


def differences(engine: Engine, *, version_table: str = VERSION_TABLE) -> list[Any]:
    """How the database's schema differs from the models (empty when they agree).

    Uses alembic's autogenerate comparison (tables, columns, types, nullability,
    indexes, comments); tables that are not retryqueue's are ignored. On a partitioned
    queue table (:mod:`~retryqueue.migrations.partitioning`) the event_id indexes that
    partitioning replaces by design are not reported.
    """
    try:
        with engine.connect() as connection:
            options = context_options(
                engine.dialect.name,
                version_table,
                partitioned=partitioning.is_partitioned(connection),
            )
            context = MigrationContext.configure(connection, opts=options)
            found = list(compare_metadata(context, metadata))
            if connection.dialect.name == "mysql":
                found = _without_misread_comments(connection, found)
            return found
    except SQLAlchemyError as exc:
        raise database_error("migration", exc) from exc


def _without_misread_comments(connection: Connection, found: list[Any]) -> list[Any]:
    """Drop comment differences that SQLAlchemy's MySQL/MariaDB reflection invents.

    It parses ``SHOW CREATE TABLE`` and gives up on a column whose default is an
    expression (``event_id``'s ``DEFAULT replace(uuid(),'-','')``), losing its comment;
    information_schema has it.
    """
    kept = []
    for entry in found:
        changes = entry if isinstance(entry, list) else [entry]
        if all(_comment_already_there(connection, change) for change in changes):
            continue
        kept.append(entry)
    return kept


def _comment_already_there(connection: Connection, change: Any) -> bool:
    if not (isinstance(change, tuple) and change and change[0] == "modify_comment"):
        return False
    _, _, table, column, _, _, wanted = change
    actual = connection.execute(
        text(
            "SELECT column_comment FROM information_schema.columns WHERE "
            "table_schema = DATABASE() AND table_name = :t AND column_name = :c"
        ),
        {"t": table, "c": column},
    ).scalar()
    return bool(actual == wanted)


def offline_sql(
    dialect_name: str,
    revision: str = HEAD,
    *,
    from_revision: str | None = None,
    version_table: str = VERSION_TABLE,
) -> str:
    """The SQL that ``upgrade`` would run on a ``dialect_name`` database, as text."""
    try:
        _, sql = _runner.run(
            None,
            _runner.upgrade_plan(revision),
            destination=revision,
            version_table=version_table,
            dialect_name=dialect_name,
            starting_rev=from_revision,
        )
    except Exception as exc:
        raise MigrationError(f"could not render SQL for {dialect_name}: {_one_line(exc)}") from exc
    return sql


def grant_statements(role: str, *, maintenance: bool = False, schema: str = "public") -> list[str]:
    """PostgreSQL GRANTs that let ``role`` use the queue with no DDL rights.

    The runtime role (applications that enqueue, workers) gets SELECT, INSERT and UPDATE on
    ``daz_retry_queue``, SELECT and INSERT on ``daz_retry_history`` and USAGE on their id
    sequences; for circuit breakers, SELECT, INSERT and UPDATE on ``daz_retry_circuits`` and
    SELECT and INSERT on ``daz_retry_circuit_events``; for rate limits and pauses, SELECT,
    INSERT and UPDATE on ``daz_retry_limits``; for the worker registry, SELECT, INSERT and
    UPDATE on ``daz_retry_workers`` (workers register and leave without DELETE); for the
    dashboard, SELECT and INSERT on ``daz_retry_hourly`` (the charts' roll-up) and SELECT,
    INSERT and UPDATE on ``daz_retry_audit`` and USAGE on its id sequence (the audit trail
    of its actions). ``maintenance=True`` adds DELETE on these tables (the audit trail
    aside: nothing deletes it), for cleanup and purge. Schema changes stay with the
    migration owner.
    """
    preparer = postgresql.dialect().identifier_preparer  # type: ignore[no-untyped-call]
    who = preparer.quote(check.text("role", role, max_length=63))
    where = preparer.quote_schema(check.text("schema", schema, max_length=63))
    delete = ", DELETE" if maintenance else ""
    return [
        f"GRANT USAGE ON SCHEMA {where} TO {who}",
        f"GRANT SELECT, INSERT, UPDATE{delete} ON {where}.daz_retry_queue TO {who}",
        f"GRANT SELECT, INSERT{delete} ON {where}.daz_retry_history TO {who}",
        f"GRANT USAGE ON SEQUENCE {where}.daz_retry_queue_id_seq, "
        f"{where}.daz_retry_history_id_seq TO {who}",
        f"GRANT SELECT, INSERT, UPDATE{delete} ON {where}.daz_retry_circuits TO {who}",
        f"GRANT SELECT, INSERT{delete} ON {where}.daz_retry_circuit_events TO {who}",
        f"GRANT USAGE ON SEQUENCE {where}.daz_retry_circuit_events_id_seq TO {who}",
        f"GRANT SELECT, INSERT, UPDATE{delete} ON {where}.daz_retry_limits TO {who}",
        f"GRANT SELECT, INSERT{delete} ON {where}.daz_retry_hourly TO {who}",
        f"GRANT SELECT, INSERT, UPDATE{delete} ON {where}.daz_retry_workers TO {who}",
        f"GRANT SELECT, INSERT, UPDATE ON {where}.daz_retry_audit TO {who}",
        f"GRANT USAGE ON SEQUENCE {where}.daz_retry_audit_id_seq TO {who}",
    ]
