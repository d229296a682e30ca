"""The ``retryqueue`` command: a thin shell over the queue, monitoring, worker and migrations.

The database comes from ``--database-url`` (before or after the command name) or the
``RETRYQUEUE_DATABASE_URL`` environment variable; the default is ``sqlite:///retryqueue.db``
(never created by a command that only reads). Expected failures (bad URL, unreachable
database, missing tables, invalid arguments, usage errors) print one line on stderr and exit
with status 1. ``python -m retryqueue`` is the same command.
"""

from __future__ import annotations

from typing import Annotated

import typer

from retryqueue.cli import (
    admin,
    circuits,
    dashboard,
    db,
    fingerprints,
    items,
    limits,
    maintenance,
    monitor,
    run,
    workers,
)
from retryqueue.cli._context import (
    DATABASE_URL_ENV,
    DEFAULT_DATABASE_URL,
    CliDeps,
    ErrorHandlingGroup,
    State,
    set_wide,
)

__all__ = ["CliDeps", "app", "main"]

app = typer.Typer(
    name="retryqueue",
    cls=ErrorHandlingGroup,
    help="Operate a retryqueue: migrate, inspect, replay, purge, run workers, export metrics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(
    ctx: typer.Context,
    database_url: Annotated[
        str,
        typer.Option(
            "--database-url",
            envvar=DATABASE_URL_ENV,
            help="SQLAlchemy URL of the queue's database.",
            show_default=True,
        ),
    ] = DEFAULT_DATABASE_URL,
    wide: Annotated[
        bool,
        typer.Option(
            "--wide", help="Tables with every column and full times, however wide they get."
        ),
    ] = False,
) -> None:
    """Operate a retryqueue from the command line."""
    set_wide(wide)
    deps = ctx.obj if isinstance(ctx.obj, CliDeps) else CliDeps()
    ctx.obj = State(raw_url=database_url, deps=deps, on_close=ctx.call_on_close)


# One line per command group: a group module exposes ``app`` (a sub-command) or ``register``.
app.add_typer(db.app, name="db")
app.add_typer(circuits.app, name="circuits")
app.add_typer(limits.app, name="limits")
admin.register(app)
maintenance.register(app)
items.register(app)
monitor.register(app)
fingerprints.register(app)
run.register(app)
dashboard.register(app)
workers.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
