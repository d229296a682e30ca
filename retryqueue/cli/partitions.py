"""``retryqueue db partitions``: opt-in monthly partitioning on PostgreSQL.

``enable`` converts the queue table once; ``create`` makes months ahead (run it monthly);
``drop`` removes months past the retention that hold only finished items; ``list`` shows
them. See docs/partitioning.md. On SQLite and MySQL/MariaDB every command refuses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import typer

from retryqueue import monitoring
from retryqueue.cli._context import (
    Progress,
    add_column,
    new_table,
    parse_duration,
    print_json,
    print_table,
    state,
    text,
)
from retryqueue.migrations import partitioning

app = typer.Typer(help="Monthly partitioning of the queue table (PostgreSQL only, opt-in).")

_ROWS_PER_SECOND = 100_000
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
MonthsAhead = Annotated[
    int, typer.Option(min=0, max=120, help="Months to create after the current one.")
]


def _now(ctx: typer.Context) -> datetime | None:
    clock = state(ctx).deps.clock
    return None if clock is None else clock.now()


@app.command()
def enable(
    ctx: typer.Context,
    months_ahead: MonthsAhead = 3,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Convert daz_retry_queue into a table partitioned by month of created_at.

    One transaction under an exclusive lock: enqueues and workers wait until it is done.
    """
    current = state(ctx)
    if current.url.get_backend_name() != "postgresql":
        raise partitioning.PartitioningError(
            f"partitioning is PostgreSQL-only (this database is {current.url.get_backend_name()})"
        )
    if not yes:
        typer.confirm(
            f"Partition daz_retry_queue of {current.display_url}? The queue is locked meanwhile",
            abort=True,
        )
    with current.session() as session:
        rows, _ = monitoring.table_sizes(session)
    # One INSERT ... SELECT copies the rows (about 100k a second): the bar is an estimate.
    with Progress.timed(f"partitioning {rows:,} row(s)", rows / _ROWS_PER_SECOND + 1):
        result = partitioning.enable(current.engine(), months_ahead=months_ahead, now=_now(ctx))
    typer.echo(
        f"partitioned daz_retry_queue: {result.rows_copied} row(s) copied into "
        f"{len(result.partitions)} partition(s) ({', '.join(result.partitions)})"
    )


@app.command()
def create(ctx: typer.Context, months_ahead: MonthsAhead = 3) -> None:
    """Create the partitions of this month and the next MONTHS_AHEAD ones (idempotent)."""
    with state(ctx).engine().begin() as connection:
        made = partitioning.create_partitions(connection, months_ahead=months_ahead, now=_now(ctx))
    typer.echo(f"created {len(made)} partition(s){': ' + ', '.join(made) if made else ''}")


@app.command("list")
def list_partitions(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Show the partitions, their ranges and (estimated) sizes."""
    with state(ctx).engine().connect() as connection:
        found = partitioning.partitions(connection)
    if as_json:
        print_json(found)
        return
    table = new_table(f"Partitions of daz_retry_queue ({len(found)})")
    for name in ("partition", "from", "to", "rows (estimate)", "size"):
        right = name in ("rows (estimate)", "size")
        add_column(table, name, keep=name != "partition", right=right)
    for part in found:
        table.add_row(
            part.name,
            "default" if part.is_default else text(part.lower),
            "" if part.is_default else text(part.upper),
            f"{part.estimated_rows:,}",
            f"{part.total_bytes / 2**20:,.1f} MiB",
        )
    print_table(table)


@app.command()
def drop(
    ctx: typer.Context,
    older_than: Annotated[
        str, typer.Option(help="Retention: drop months that ended longer ago (90d, 12w).")
    ] = "90d",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only say what would be dropped.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Drop the months past the retention whose items are all finished.

    A month holding a pending or processing item, or an item finished after the cutoff,
    is kept (cleanup deletes its finished rows instead). Each drop is its own transaction.
    """
    seconds = parse_duration(older_than, "--older-than")
    now = _now(ctx)
    engine = state(ctx).engine()
    with engine.connect() as connection:
        plan = partitioning.drop_partitions(connection, seconds, now=now, dry_run=True)
        connection.rollback()
        doomed = [each for each in plan if each.droppable]
        if not dry_run and doomed and not yes:
            names = ", ".join(each.name for each in doomed)
            typer.confirm(f"Drop {len(doomed)} partition(s) ({names})?", abort=True)
        outcome = plan
        if not dry_run:
            outcome = []
            for each in partitioning.iter_drop_partitions(connection, seconds, now=now):
                connection.commit()
                outcome.append(each)
            connection.commit()
    if as_json:
        print_json({"dry_run": dry_run, "partitions": outcome})
        return
    for each in outcome:
        verb = "dropped" if each.dropped else "kept"
        reason = f" ({each.reason})" if each.reason else ""
        typer.echo(f"{verb} {each.name}: {each.rows} row(s){reason}")
    dropped = sum(each.dropped for each in outcome)
    rows = sum(each.rows for each in outcome if each.dropped)
    if dry_run:
        typer.echo(f"would drop {len(doomed)} partition(s) ({sum(e.rows for e in doomed)} rows)")
    else:
        typer.echo(f"dropped {dropped} partition(s), {rows} row(s)")
