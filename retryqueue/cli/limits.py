"""``retryqueue limits``: per-key rate limits and pauses: list, set, clear, pause, resume."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from retryqueue.cli._context import CliError, parse_duration, requested_by, state
from retryqueue.cli._output import add_column, new_table, print_json, print_table, text, when
from retryqueue.cli.circuits import require_known
from retryqueue.limits import KeyLimit

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
KeyArgument = Annotated[
    str, typer.Argument(help="The key: a plugin_name, or plugin_name:event_type.")
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Accept a key no queued item has (yet).")
]

app = typer.Typer(
    name="limits",
    help="Rate limits and pauses per key: list them (no subcommand), set, clear, pause, resume.",
    no_args_is_help=False,
    rich_markup_mode=None,
)


@app.callback(invoke_without_command=True)
def limits(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List every key with a rate limit or a current pause."""
    if ctx.invoked_subcommand is not None:
        return
    current = state(ctx)
    with current.session() as session:
        rows = current.queue().key_limits(session)
    if as_json:
        print_json(rows)
        return
    print_table(limits_table(rows))


@app.command("set")
def set_limit(
    ctx: typer.Context,
    key: KeyArgument,
    rate: Annotated[float, typer.Option("--rate", help="Items per second (e.g. 20, or 0.5).")],
    burst: Annotated[
        float | None,
        typer.Option("--burst", help="Items that may start at once [the rate, at least 1]."),
    ] = None,
    force: ForceOption = False,
    as_json: JsonOption = False,
) -> None:
    """Limit KEY to --rate items per second (bursts of --burst), across every worker."""
    current = state(ctx)
    with current.transaction() as session:
        queue = current.queue()
        if not force:
            require_known(session, queue, key, verb="limits")
        row = queue.set_limit(session, key, rate, burst)
    _print_one(row, as_json)


@app.command("clear")
def clear_limit(ctx: typer.Context, key: KeyArgument, as_json: JsonOption = False) -> None:
    """Remove KEY's rate limit (a pause of KEY stays)."""
    current = state(ctx)
    with current.transaction() as session:
        row = current.queue().clear_limit(session, key)
    _print_one(row, as_json, key=key, gone="no limit, not paused")


@app.command("pause")
def pause(
    ctx: typer.Context,
    key: KeyArgument,
    for_: Annotated[
        str | None, typer.Option("--for", help="How long: 30s, 10m, 2h (at most 7 days).")
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", help="Until when: ISO 8601 (naive means UTC)."),
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why [paused by USER].")] = None,
    force: ForceOption = False,
    as_json: JsonOption = False,
) -> None:
    """Pause KEY: every worker skips its items until then (a pause only ever lengthens)."""
    if (for_ is None) == (until is None):
        raise CliError("give either --for or --until")
    seconds = None if for_ is None else parse_duration(for_, "--for")
    end = None if until is None else _parse_until(until)
    current = state(ctx)
    with current.transaction() as session:
        queue = current.queue()
        if not force:
            require_known(session, queue, key, verb="pauses")
        row = queue.pause_key(
            session, key, until=end, seconds=seconds, reason=reason or f"paused by {requested_by()}"
        )
    _print_one(row, as_json)


@app.command("resume")
def resume(ctx: typer.Context, key: KeyArgument, as_json: JsonOption = False) -> None:
    """Lift KEY's pause now: its items run again."""
    current = state(ctx)
    with current.transaction() as session:
        row = current.queue().resume_key(session, key)
    _print_one(row, as_json, key=key, gone="no limit, not paused")


def _parse_until(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise CliError(f"invalid --until {value!r}: expected an ISO 8601 time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _print_one(row: KeyLimit | None, as_json: bool, *, key: str = "", gone: str = "") -> None:
    if as_json:
        print_json(row if row is not None else {"key": key.strip(), "removed": True})
        return
    if row is None:
        typer.echo(f"{key.strip()}: {gone}")
        return
    typer.echo(f"{row.key}: {describe(row)}")


def describe(row: KeyLimit) -> str:
    """One line: the limit and the pause of a key."""
    parts = []
    if row.rate_per_second is not None:
        parts.append(f"{row.rate_per_second:g}/s, burst {row.burst:g}")
    if row.paused_until is not None:
        parts.append(f"paused until {text(row.paused_until)} ({row.pause_reason})")
    return "; ".join(parts) or "no limit, not paused"


def limits_table(rows: Sequence[KeyLimit]) -> Table:
    """The limits and pauses as a rich table."""
    table = new_table(f"Rate limits and pauses ({len(rows)})")
    add_column(table, "key")
    for name in ("rate/s", "burst", "tokens", "throttled"):
        add_column(table, name, keep=True)
    add_column(table, "paused until", keep=True)
    add_column(table, "reason")
    for row in rows:
        limited = row.rate_per_second is not None
        table.add_row(
            row.key,
            f"{row.rate_per_second:g}" if limited else "-",
            f"{row.burst:g}" if row.burst is not None else "-",
            f"{row.tokens:.1f}" if row.tokens is not None else "-",
            str(row.throttled_claims),
            when(row.paused_until),
            text(row.pause_reason),
        )
    return table
