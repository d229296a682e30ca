"""The schema migrations shipped in the package, and functions to run them.

Revisions live in ``retryqueue/migrations/versions`` on the branch labelled
``retryqueue``. Two ways to use them:

* Applications without alembic of their own: ``retryqueue.migrations.upgrade(engine)``.
  The revision applied is recorded in the table ``retryqueue_alembic_version``.
* Opt-in, PostgreSQL only and outside the revisions: :func:`enable_partitioning` turns the
  queue table into monthly partitions (see :mod:`retryqueue.migrations.partitioning`).
* Applications with alembic: add the folder :func:`package_path` returns (in
  ``alembic.ini``: ``version_locations = %(here)s/migrations ...`` plus that folder, or in
  ``env.py`` / code through ``Config.set_main_option``) and run
  ``alembic upgrade retryqueue@head``; the revisions then live in the application's own
  version table beside its branches.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import SQLAlchemyError

from retryqueue import validation as check
from retryqueue.errors import MigrationError, database_error
from retryqueue.migrations import partitioning
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
    "VERSION_TABLE",
    "PartitioningError",
    "create_partitions",
    "current",
    "differences",
    "downgrade",
    "drop_partitions",
    "enable_partitioning",
    "grant_statements",
    "heads",
    "is_partitioned",
    "iter_drop_partitions",
    "make_config",
    "offline_sql",
    "package_path",
    "partitioning",
    "partitions",
    "stamp",
    "upgrade",
]

BRANCH = "retryqueue"
HEAD = f"{BRANCH}@head"
VERSION_TABLE = "retryqueue_alembic_version"
SCRIPT_LOCATION = "retryqueue:migrations"


def make_config(url: str | None = None, *, version_table: str = VERSION_TABLE) -> Config:
    """An alembic Config pointing at the packaged revisions (works from a wheel)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", str(package_path()))
    config.set_main_option("version_table", version_table)
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def script_directory() -> ScriptDirectory:
    """The packaged revisions as an alembic ScriptDirectory."""
    return ScriptDirectory.from_config(make_config())


def heads() -> list[str]:
    """The head revision ids of the packaged revisions (there should be one)."""
    return list(script_directory().get_heads())


@contextmanager
def _connected(engine: Engine, version_table: str) -> Iterator[Config]:
    config = make_config(version_table=version_table)
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            yield config
    except SQLAlchemyError as exc:
        raise database_error("migration", exc) from exc


def upgrade(engine: Engine, revision: str = HEAD, *, version_table: str = VERSION_TABLE) -> None:
    """Apply the packaged revisions up to ``revision`` (default: the newest)."""
    with _connected(engine, version_table) as config:
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str, *, version_table: str = VERSION_TABLE) -> None:
    """Undo revisions down to ``revision``; ``"retryqueue@base"`` removes everything."""
    with _connected(engine, version_table) as config:
        command.downgrade(config, revision)


def stamp(engine: Engine, revision: str, *, version_table: str = VERSION_TABLE) -> None:
    """Record ``revision`` as applied without running it (adopting an existing schema)."""
    with _connected(engine, version_table) as config:
        command.stamp(config, revision)


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
    indexes); tables that are not retryqueue's are ignored. On a partitioned queue table
    (:mod:`~retryqueue.migrations.partitioning`) the event_id indexes that partitioning
    replaces by design are not reported.
    """
    ours = set(metadata.tables)
    replaced: frozenset[str] = frozenset()

    def include(obj: Any, name: str | None, kind: str, reflected: bool, other: Any) -> bool:
        table = obj if kind == "table" else getattr(obj, "table", None)
        table_name = name if kind == "table" else getattr(table, "name", None)
        if kind == "index" and name in replaced:
            return False
        return table_name in ours and _created_on(obj, kind, reflected, engine.dialect.name)

    try:
        with engine.connect() as connection:
            if partitioning.is_partitioned(connection):
                replaced = partitioning.REPLACED_INDEXES
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "version_table": version_table,
                    "include_object": include,
                },
            )
            return list(compare_metadata(context, metadata))
    except SQLAlchemyError as exc:
        raise database_error("migration", exc) from exc


def _created_on(obj: Any, kind: str, reflected: bool, dialect_name: str) -> bool:
    """False for a model index restricted (``ddl_if``) to other dialects than this one."""
    if kind != "index" or reflected:
        return True
    only = getattr(getattr(obj, "_ddl_if", None), "dialect", None)
    if only is None:
        return True
    return dialect_name in ((only,) if isinstance(only, str) else only)


def offline_sql(
    dialect_name: str,
    revision: str = HEAD,
    *,
    from_revision: str | None = None,
    version_table: str = VERSION_TABLE,
) -> str:
    """The SQL that ``upgrade`` would run on a ``dialect_name`` database, as text."""
    config = make_config(f"{dialect_name}://", version_table=version_table)
    target = f"{from_revision}:{revision}" if from_revision else revision
    buffer = io.StringIO()
    config.output_buffer = buffer
    try:
        with redirect_stdout(buffer):
            command.upgrade(config, target, sql=True)
    except Exception as exc:
        raise MigrationError(f"could not render SQL for {dialect_name}: {exc}") from exc
    return buffer.getvalue()


def grant_statements(role: str, *, maintenance: bool = False, schema: str = "public") -> list[str]:
    """PostgreSQL GRANTs that let ``role`` use the queue with no DDL rights.

    The runtime role (applications that enqueue, workers) gets SELECT, INSERT and UPDATE on
    ``daz_retry_queue``, SELECT and INSERT on ``daz_retry_history`` and USAGE on their id
    sequences; for circuit breakers, SELECT, INSERT and UPDATE on ``daz_retry_circuits`` and
    SELECT and INSERT on ``daz_retry_circuit_events``. ``maintenance=True`` adds DELETE on
    these tables, for cleanup and purge. Schema changes stay with the migration owner.
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
    ]


def package_path() -> Path:
    """Where the revisions are on disk (inside the installed package)."""
    return Path(__file__).parent / "versions"
