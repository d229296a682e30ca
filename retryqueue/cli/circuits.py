"""``retryqueue circuits``: show the circuit breakers, open or close one by hand, audit them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer
from rich.table import Table

from retryqueue.circuits import CircuitBreaker, circuit_events, circuit_states
from retryqueue.cli._context import (
    console,
    parse_duration,
    print_json,
    requested_by,
    state,
    text,
)
from retryqueue.results import CircuitEvent, CircuitState

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
KeyArgument = Annotated[
    str, typer.Argument(help="The circuit key: a plugin_name, or plugin_name:event_type.")
]

app = typer.Typer(
    name="circuits",
    help="Circuit breakers: list them (no subcommand), open or close one, read the audit trail.",
    no_args_is_help=False,
    rich_markup_mode=None,
)


def _breaker(ctx: typer.Context) -> CircuitBreaker:
    return CircuitBreaker(clock=state(ctx).deps.clock)


@app.callback(invoke_without_command=True)
def circuits(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List every circuit (keys without a row are closed)."""
    if ctx.invoked_subcommand is not None:
        return
    with state(ctx).session() as session:
        rows = circuit_states(session)
    if as_json:
        print_json(rows)
        return
    console().print(circuits_table(rows))


@app.command("open")
def open_circuit(
    ctx: typer.Context,
    key: KeyArgument,
    for_: Annotated[
        str,
        typer.Option(
            "--for", help="How long before the first probe (30s, 10m, 1h).", show_default=True
        ),
    ] = "10m",
    reason: Annotated[str, typer.Option(help="Why, for the audit trail.")] = "manual",
    as_json: JsonOption = False,
) -> None:
    """Open KEY's circuit: workers skip its items until the cool-down ends and a probe passes."""
    cooldown = parse_duration(for_, "--for")
    current = state(ctx)
    with current.transaction() as session:
        circuit = _breaker(ctx).open(
            session, key, cooldown=cooldown, reason=reason, actor=requested_by()
        )
    _print_one(circuit, as_json)


@app.command("close")
def close_circuit(ctx: typer.Context, key: KeyArgument, as_json: JsonOption = False) -> None:
    """Close KEY's circuit now and reset its counters: its items run again."""
    current = state(ctx)
    with current.transaction() as session:
        circuit = _breaker(ctx).close(session, key, actor=requested_by())
    _print_one(circuit, as_json)


@app.command("events")
def events(
    ctx: typer.Context,
    key: Annotated[str | None, typer.Argument(help="Only this key's transitions.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.", show_default=True)] = 50,
    as_json: JsonOption = False,
) -> None:
    """The audit trail: the newest transitions, newest first."""
    with state(ctx).session() as session:
        rows = circuit_events(session, key, limit)
    if as_json:
        print_json(rows)
        return
    console().print(events_table(rows))


def _print_one(circuit: CircuitState, as_json: bool) -> None:
    if as_json:
        print_json(circuit)
        return
    until = f" until {text(circuit.open_until)}" if circuit.open_until else ""
    typer.echo(f"circuit {circuit.key}: {circuit.status.value}{until}")


def circuits_table(rows: Sequence[CircuitState]) -> Table:
    """The circuits as a rich table."""
    table = Table(title=f"Circuits ({len(rows)})")
    for name in (
        "key",
        "state",
        "failures",
        "window",
        "opened",
        "open until",
        "cooldown",
        "probe owner",
        "reason",
    ):
        table.add_column(name)
    for row in rows:
        table.add_row(
            row.key,
            row.status.value,
            str(row.consecutive_failures),
            f"{row.window_failures}/{row.window_attempts}",
            text(row.opened_at),
            text(row.open_until),
            f"{row.cooldown_seconds:g}s" if row.cooldown_seconds else "-",
            text(row.probe_owner),
            text(row.reason),
        )
    return table


def events_table(rows: Sequence[CircuitEvent]) -> Table:
    """Audit rows as a rich table."""
    table = Table(title=f"Circuit transitions ({len(rows)})")
    for name in ("at", "key", "from", "to", "reason", "cooldown", "actor"):
        table.add_column(name)
    for row in rows:
        table.add_row(
            text(row.occurred_at),
            row.key,
            row.from_status.value,
            row.to_status.value,
            row.reason,
            f"{row.cooldown_seconds:g}s" if row.cooldown_seconds else "-",
            text(row.actor),
        )
    return table
