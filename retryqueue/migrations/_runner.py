"""Running the packaged revisions in-process: the wheel ships revisions, not an env.py.

``alembic.command`` would load an ``env.py`` from the script directory; here the same
:class:`~alembic.runtime.environment.EnvironmentContext` is set up directly, with the
options of :func:`context_options` (which the repository's ``alembic/env.py`` uses too),
and every revision step applied is reported back.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, MigrationInfo
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from retryqueue.migrations import partitioning
from retryqueue.models import metadata

__all__ = ["DEFAULT_VERSION_TABLE", "context_options", "package_path", "run", "script"]

DEFAULT_VERSION_TABLE = "retryqueue_alembic_version"


def package_path() -> Path:
    """The one folder holding the revisions (inside the installed package)."""
    return Path(__file__).parent / "versions"


def script() -> ScriptDirectory:
    """The packaged revisions as an alembic ScriptDirectory (no env.py needed)."""
    location = str(package_path())
    return ScriptDirectory(location, version_locations=[location])


def context_options(
    dialect_name: str, version_table: str = DEFAULT_VERSION_TABLE, *, partitioned: bool = False
) -> dict[str, Any]:
    """The ``context.configure`` options for retryqueue's revisions and its autogenerate.

    Autogenerate compares retryqueue's tables only (not the partitions or the event-key
    table of a partitioned queue, nor other tables); on a ``partitioned`` queue, not the
    event_id indexes that partitioning replaces by design.
    """
    return {
        "target_metadata": metadata,
        "version_table": version_table,
        "render_as_batch": dialect_name == "sqlite",
        "compare_type": True,
        "include_object": _only_ours(dialect_name, partitioned),
    }


def _only_ours(dialect_name: str, partitioned: bool) -> Callable[..., bool]:
    ours = set(metadata.tables)
    replaced = partitioning.REPLACED_INDEXES if partitioned else frozenset()

    def include(obj: Any, name: str | None, kind: str, reflected: bool, other: Any) -> bool:
        table = obj if kind == "table" else getattr(obj, "table", None)
        table_name = name if kind == "table" else getattr(table, "name", None)
        if kind == "index" and name in replaced:
            return False
        return table_name in ours and _created_on(obj, kind, reflected, dialect_name)

    return include


def _created_on(obj: Any, kind: str, reflected: bool, dialect_name: str) -> bool:
    """False for a model index restricted (``ddl_if``) to other dialects than this one."""
    if kind != "index" or reflected:
        return True
    only = getattr(getattr(obj, "_ddl_if", None), "dialect", None)
    if only is None:
        return True
    return dialect_name in ((only,) if isinstance(only, str) else only)


def _recorder(
    revisions: list[str], on_revision: Callable[[str], None] | None = None
) -> Callable[..., None]:
    """An ``on_version_apply`` hook appending each revision applied (not stamps).

    ``on_revision`` is told each one as soon as it is done (a progress bar advances).
    """

    def record(
        ctx: MigrationContext,
        step: MigrationInfo,
        heads: Collection[Any],
        run_args: Mapping[str, Any],
    ) -> None:
        if not step.is_stamp and step.up_revision_id is not None:
            revisions.append(step.up_revision_id)
            if on_revision is not None:
                on_revision(step.up_revision_id)

    return record


def run(
    connection: Connection | None,
    plan: Callable[[ScriptDirectory, Any], Any],
    *,
    destination: Any,
    version_table: str,
    dialect_name: str | None = None,
    starting_rev: str | None = None,
    purge: bool = False,
    on_revision: Callable[[str], None] | None = None,
) -> tuple[list[str], str]:
    """Run ``plan`` on ``connection`` (or render SQL when it is None).

    Returns the revisions applied and, offline, the SQL. ``on_revision`` is called with
    each revision id as soon as it has been applied (or undone).
    """
    revisions = script()
    applied: list[str] = []
    config = Config()
    buffer = io.StringIO()
    config.output_buffer = buffer
    with (
        EnvironmentContext(
            config,
            revisions,
            fn=lambda heads, _context: plan(revisions, heads),
            as_sql=connection is None,
            starting_rev=starting_rev,
            destination_rev=destination,
            purge=purge,
        ) as environment,
        redirect_stdout(buffer),
    ):
        name = connection.dialect.name if connection is not None else str(dialect_name)
        options = context_options(name, version_table)
        if connection is None:
            environment.configure(
                dialect_name=name,
                literal_binds=True,
                dialect_opts={"paramstyle": "named"},
                **options,
            )
        else:
            environment.configure(
                connection=connection,
                on_version_apply=_recorder(applied, on_revision),
                **options,
            )
        with environment.begin_transaction():
            environment.run_migrations()
    return applied, buffer.getvalue()


def upgrade_plan(target: str) -> Callable[[ScriptDirectory, Any], Any]:
    """alembic's plan from the database's heads up to ``target``."""
    return lambda revisions, heads: revisions._upgrade_revs(target, heads)


def downgrade_plan(target: str) -> Callable[[ScriptDirectory, Any], Any]:
    """alembic's plan from the database's heads down to ``target``."""
    return lambda revisions, heads: revisions._downgrade_revs(target, heads)


def stamp_plan(targets: Sequence[str]) -> Callable[[ScriptDirectory, Any], Any]:
    """alembic's plan to record ``targets`` without running them."""
    return lambda revisions, heads: revisions._stamp_revs(tuple(targets), heads)
