"""``retryqueue db``: the packaged alembic revisions (they ship inside the wheel)."""

from __future__ import annotations

from typing import Annotated

import typer
from alembic.script.revision import RevisionError
from sqlalchemy import Engine

from retryqueue import migrations
from retryqueue.cli import partitions
from retryqueue.cli._context import CliError, Progress, State, print_json, state

app = typer.Typer(help="Schema migrations (alembic revisions shipped in the package).")
app.add_typer(partitions.app, name="partitions")
app.add_typer(partitions.app, name="partition", hidden=True)  # `db partition enable` reads well


SQL_DIALECTS = ("postgresql", "sqlite", "mysql", "mariadb")
"""The dialects ``db sql`` renders: the backends retryqueue supports."""

VersionTable = Annotated[
    str,
    typer.Option(
        "--version-table",
        help="Where the applied revision is recorded; alembic_version when your "
        "application's alembic runs ours.",
    ),
]


def _checked(ctx: typer.Context, version_table: str) -> State:
    """The CLI state, refusing to run when our revisions are recorded in another table."""
    current = state(ctx)
    found = migrations.elsewhere(current.engine(), version_table)
    if found is not None:
        raise CliError(_elsewhere(version_table, *found))
    return current


def _elsewhere(version_table: str, table: str, revisions: list[str]) -> str:
    return (
        f"{version_table} records no retryqueue revision, but {table} holds "
        f"{', '.join(revisions)} (migrated by {_who(table)}): pass --version-table {table}"
    )


def _who(table: str) -> str:
    if table == migrations.HOST_VERSION_TABLE:
        return "an application's own alembic"
    return "retryqueue db"


@app.command()
def upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = migrations.HEAD,
    version_table: VersionTable = migrations.VERSION_TABLE,
) -> None:
    """Apply the revisions up to REVISION (default: the newest), listing them."""
    current = _checked(ctx, version_table)
    engine = current.engine()
    pending = _to_apply(engine, revision, version_table)
    # One tick per revision, as alembic finishes it (all commit together at the end).
    with Progress("applying revisions", len(pending), quiet=not pending) as advance:
        applied = migrations.upgrade(
            engine, revision, version_table=version_table, on_revision=lambda _: advance(1)
        )
    now = _describe(migrations.revisions_in(current.engine(), version_table) or [])
    if not applied:
        typer.echo(f"nothing to do: {current.display_url} is at {now}")
        return
    typer.echo(f"upgraded {current.display_url} to {now}: applied {', '.join(applied)}")


@app.command()
def downgrade(
    ctx: typer.Context,
    revision: Annotated[
        str, typer.Argument(help="Target revision; retryqueue@base removes the tables.")
    ],
    version_table: VersionTable = migrations.VERSION_TABLE,
    yes: Annotated[
        bool, typer.Option("--yes", help="Do not ask before dropping tables that hold rows.")
    ] = False,
) -> None:
    """Undo revisions down to REVISION, listing them; asks before dropping rows."""
    current = _checked(ctx, version_table)
    plan = migrations.plan_downgrade(current.engine(), revision, version_table=version_table)
    if plan.rows_lost and not yes:
        doomed = ", ".join(
            f"{table} ({rows:,} row(s))" for table, rows in plan.rows.items() if rows
        )
        typer.confirm(
            f"Undoing {', '.join(plan.revisions)} drops {doomed} of {current.display_url}: "
            f"{plan.rows_lost:,} row(s) would be lost. Go on?",
            abort=True,
        )
    with Progress("undoing revisions", len(plan.revisions), quiet=not plan.revisions) as advance:
        undone = migrations.downgrade(
            current.engine(),
            revision,
            version_table=version_table,
            on_revision=lambda _: advance(1),
        )
    now = _describe(migrations.revisions_in(current.engine(), version_table) or [])
    if not undone:
        typer.echo(f"nothing to do: {current.display_url} is at {now}")
        return
    typer.echo(f"downgraded {current.display_url} to {now}: undid {', '.join(undone)}")


@app.command()
def stamp(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Revision to record as applied.")],
    version_table: VersionTable = migrations.VERSION_TABLE,
) -> None:
    """Record REVISION as applied without running it (adopting an existing schema)."""
    current = _checked(ctx, version_table)
    migrations.stamp(current.engine(), revision, version_table=version_table)
    now = _describe(migrations.revisions_in(current.engine(), version_table) or [])
    typer.echo(f"stamped {current.display_url} at {now}")


@app.command("current")
def show_current(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    version_table: VersionTable = migrations.VERSION_TABLE,
) -> None:
    """Show the revision the database is at, and the newest packaged one."""
    engine = state(ctx).engine()
    revisions = migrations.revisions_in(engine, version_table) or []
    heads = migrations.heads()
    found = migrations.elsewhere(engine, version_table)
    if as_json:
        report: dict[str, object] = {
            "current": revisions,
            "heads": heads,
            "up_to_date": revisions == heads,
        }
        if found is not None:
            report["recorded_in"] = {"table": found[0], "revisions": found[1]}
        print_json(report)
        return
    suffix = " (head)" if revisions and sorted(revisions) == sorted(heads) else ""
    typer.echo(f"{_describe(revisions)}{suffix}")
    if found is not None:
        typer.echo(_elsewhere(version_table, *found))
    if revisions != heads:
        typer.echo(f"newest packaged revision: {', '.join(heads)}")


@app.command("sql")
def offline_sql(
    ctx: typer.Context,
    dialect: Annotated[
        str | None,
        typer.Option(help=f"{', '.join(SQL_DIALECTS)}; default: the database URL's."),
    ] = None,
    revision: Annotated[str, typer.Option("--to", help="Target revision.")] = migrations.HEAD,
    from_revision: Annotated[
        str | None, typer.Option("--from", help="Start revision (default: empty database).")
    ] = None,
) -> None:
    """Print the SQL an upgrade would run, for a DBA to review or apply (no connection)."""
    name = (dialect or state(ctx).url.get_backend_name()).lower()
    if name not in SQL_DIALECTS:
        given = "--dialect" if dialect else "the database URL's dialect"
        raise CliError(f"{given} {name!r} is not supported: use one of {', '.join(SQL_DIALECTS)}")
    typer.echo(migrations.offline_sql(name, revision, from_revision=from_revision), nl=False)


@app.command("grants")
def grants(
    role: Annotated[str, typer.Argument(help="The PostgreSQL role to grant to.")],
    maintenance: Annotated[bool, typer.Option(help="Also allow DELETE (cleanup, purge).")] = False,
    schema: Annotated[str, typer.Option(help="Schema holding the tables.")] = "public",
) -> None:
    """Print the GRANTs for a least-privilege runtime (or maintenance) role: DML, no DDL."""
    for statement in migrations.grant_statements(role, maintenance=maintenance, schema=schema):
        typer.echo(f"{statement};")


def _to_apply(engine: Engine, revision: str, version_table: str) -> list[str]:
    """The revisions an upgrade to ``revision`` would apply (empty if it cannot tell).

    When the target is unknown or behind, the upgrade itself says what is wrong.
    """
    now = migrations.revisions_in(engine, version_table) or []
    if len(now) > 1:
        return []
    try:
        steps = migrations.script_directory().iterate_revisions(revision, now[0] if now else "base")
        return [step.revision for step in steps if step is not None]
    except RevisionError:
        return []


def _describe(revisions: list[str]) -> str:
    return ", ".join(revisions) if revisions else "no revision (empty or unmigrated database)"
