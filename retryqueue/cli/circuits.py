"""``retryqueue circuits``: show the circuit breakers, open or close one by hand, audit them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.orm import Session

from retryqueue.circuits import CircuitBreaker, circuit_events, circuit_states
from retryqueue.cli._context import (
    CliError,
    add_column,
    new_table,
    parse_duration,
    print_json,
    print_table,
    requested_by,
    state,
    text,
    when,
    wide,
)
from retryqueue.limits import KeyLimit
from retryqueue.queue import RetryQueue
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
    current = state(ctx)
    with current.session() as session:
        rows = circuit_states(session)
        paused = [row for row in current.queue().key_limits(session) if row.paused_until]
    if as_json:
        print_json(rows)
        return
    print_table(circuits_table(rows))
    if paused:  # a pause stops a key like an open circuit: show both in one place
        print_table(pauses_table(paused))


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
    force: Annotated[
        bool, typer.Option("--force", help="Open it even if no item or circuit has this key.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Open KEY's circuit: workers skip its items until the cool-down ends and a probe passes.

    KEY's plugin (and event type) must be known, from a queued item or an existing
    circuit, so a typo does not open a circuit nothing uses; --force skips that check.
    """
    cooldown = parse_duration(for_, "--for")
    current = state(ctx)
    with current.transaction() as session:
        if not force:
            require_known(session, current.queue(), key)
        circuit = _breaker(ctx).open(
            session, key, cooldown=cooldown, reason=reason, actor=requested_by()
        )
    _print_one(circuit, as_json)


@app.command("close")
def close_circuit(ctx: typer.Context, key: KeyArgument, as_json: JsonOption = False) -> None:
    """Close KEY's circuit now and reset its counters: its items run again."""
    current = state(ctx)
    with current.transaction() as session:
        known = [row.key for row in circuit_states(session)]
        if key.strip() not in known:
            raise CliError(f"no circuit {key!r}{_listing('circuits', known)}")
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
    print_table(events_table(rows))


def require_known(session: Session, queue: RetryQueue, key: str, *, verb: str = "opens") -> None:
    """:class:`CliError` unless KEY names a plugin (and event type) that is in use."""
    plugin, _, event_type = key.strip().partition(":")
    circuits = {row.key for row in circuit_states(session)}
    if key.strip() in circuits:
        return
    rows = queue.stats(session)
    plugins = sorted(
        {row.plugin_name for row in rows if row.plugin_name}
        | {known.partition(":")[0] for known in circuits}
    )
    if plugin not in plugins:
        raise CliError(
            f"unknown plugin {plugin!r} in circuit key {key!r}{_listing('plugins', plugins)}; "
            f"--force {verb} it anyway"
        )
    event_types = sorted({row.event_type for row in rows if row.plugin_name == plugin})
    if event_type and event_type not in event_types:
        raise CliError(
            f"plugin {plugin!r} has no event type {event_type!r}"
            f"{_listing('event types', event_types)}; --force {verb} it anyway"
        )


def _listing(what: str, names: Sequence[str]) -> str:
    if not names:
        return f" (no {what} known)"
    return f" (known {what}: {', '.join(names[:20])}{', …' if len(names) > 20 else ''})"


def _print_one(circuit: CircuitState, as_json: bool) -> None:
    if as_json:
        print_json(circuit)
        return
    until = f" until {text(circuit.open_until)}" if circuit.open_until else ""
    typer.echo(f"circuit {circuit.key}: {circuit.status.value}{until}")


def circuits_table(rows: Sequence[CircuitState]) -> Table:
    """The circuits as a rich table (--wide adds opened, cooldown and probe owner)."""
    full = wide()
    table = new_table(f"Circuits ({len(rows)})")
    add_column(table, "key")
    for name in ("state", "failures", "window"):
        add_column(table, name, keep=True)
    if full:
        add_column(table, "opened", keep=True)
    add_column(table, "open until", keep=True)
    if full:
        add_column(table, "cooldown", keep=True)
        add_column(table, "probe owner")
    add_column(table, "reason")
    for row in rows:
        cooldown = f"{row.cooldown_seconds:g}s" if row.cooldown_seconds else "-"
        table.add_row(
            row.key,
            row.status.value,
            str(row.consecutive_failures),
            f"{row.window_failures}/{row.window_attempts}",
            *([when(row.opened_at)] if full else []),
            when(row.open_until),
            *([cooldown, text(row.probe_owner)] if full else []),
            text(row.reason),
        )
    return table


def events_table(rows: Sequence[CircuitEvent]) -> Table:
    """Audit rows as a rich table."""
    table = new_table(f"Circuit transitions ({len(rows)})")
    for name in ("at", "key", "from", "to", "reason", "cooldown", "actor"):
        add_column(table, name, keep=name in ("at", "from", "to", "cooldown"))
    for row in rows:
        table.add_row(
            when(row.occurred_at),
            row.key,
            row.from_status.value,
            row.to_status.value,
            row.reason,
            f"{row.cooldown_seconds:g}s" if row.cooldown_seconds else "-",
            text(row.actor),
        )
    return table


def pauses_table(rows: Sequence[KeyLimit]) -> Table:
    """Paused keys (see ``retryqueue limits``) as a rich table."""
    table = new_table(f"Paused keys ({len(rows)}; retryqueue limits resume KEY lifts one)")
    add_column(table, "key")
    add_column(table, "paused until", keep=True)
    add_column(table, "reason")
    for row in rows:
        table.add_row(row.key, when(row.paused_until), text(row.pause_reason))
    return table
