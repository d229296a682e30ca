"""``retryqueue db``: the packaged alembic revisions (they ship inside the wheel)."""

from __future__ import annotations

from typing import Annotated

import typer

from retryqueue import migrations
from retryqueue.cli import partitions
from retryqueue.cli._context import print_json, state

app = typer.Typer(help="Schema migrations (alembic revisions shipped in the package).")
app.add_typer(partitions.app, name="partitions")
app.add_typer(partitions.app, name="partition", hidden=True)  # `db partition enable` reads well


@app.command()
def upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = migrations.HEAD,
) -> None:
    """Apply the revisions up to REVISION (default: the newest)."""
    current = state(ctx)
    migrations.upgrade(current.engine(), revision)
    typer.echo(
        f"upgraded {current.display_url} to {_describe(migrations.current(current.engine()))}"
    )


@app.command()
def downgrade(
    ctx: typer.Context,
    revision: Annotated[
        str, typer.Argument(help="Target revision; retryqueue@base removes the tables.")
    ],
) -> None:
    """Undo revisions down to REVISION."""
    current = state(ctx)
    migrations.downgrade(current.engine(), revision)
    typer.echo(
        f"downgraded {current.display_url} to {_describe(migrations.current(current.engine()))}"
    )


@app.command()
def stamp(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Revision to record as applied.")],
) -> None:
    """Record REVISION as applied without running it (adopting an existing schema)."""
    current = state(ctx)
    migrations.stamp(current.engine(), revision)
    typer.echo(
        f"stamped {current.display_url} at {_describe(migrations.current(current.engine()))}"
    )


@app.command("current")
def show_current(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the revision the database is at, and the newest packaged one."""
    revisions = migrations.current(state(ctx).engine())
    heads = migrations.heads()
    if as_json:
        print_json({"current": revisions, "heads": heads, "up_to_date": revisions == heads})
        return
    suffix = " (head)" if revisions and sorted(revisions) == sorted(heads) else ""
    typer.echo(f"{_describe(revisions)}{suffix}")
    if revisions != heads:
        typer.echo(f"newest packaged revision: {', '.join(heads)}")


@app.command("sql")
def offline_sql(
    ctx: typer.Context,
    dialect: Annotated[
        str | None, typer.Option(help="postgresql or sqlite; default: the database URL's.")
    ] = None,
    revision: Annotated[str, typer.Option("--to", help="Target revision.")] = migrations.HEAD,
    from_revision: Annotated[
        str | None, typer.Option("--from", help="Start revision (default: empty database).")
    ] = None,
) -> None:
    """Print the SQL an upgrade would run, for a DBA to review or apply (no connection)."""
    name = dialect or state(ctx).url.get_backend_name()
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


def _describe(revisions: list[str]) -> str:
    return ", ".join(revisions) if revisions else "no revision (empty or unmigrated database)"
