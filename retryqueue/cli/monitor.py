"""Read-only commands: stats, alerts, stuck, show, history, throughput, success rate, triage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

import typer
from rich.table import Table
from sqlalchemy.orm import Session

from retryqueue import monitoring
from retryqueue.cli._context import (
    CliError,
    jsonable,
    parse_duration,
    print_json,
    print_table,
    state,
)
from retryqueue.cli._tables import (
    alerts_table,
    dead_letter_table,
    error_group_table,
    history_table,
    item_table,
    stats_table,
    stuck_table,
    success_table,
    throughput_table,
)
from retryqueue.queue import RetryQueue
from retryqueue.results import HistoryEntry
from retryqueue.statements import DEAD_LETTER_GROUPS

# The tables live in ``_tables``; the two that ``run`` prints are still importable from here.
__all__ = [
    "JsonOption",
    "alerts",
    "alerts_table",
    "dead_letters",
    "history",
    "register",
    "show",
    "stats",
    "stats_table",
    "stuck",
    "success_rate",
    "throughput",
]

R = TypeVar("R")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command()(stats)
    app.command()(alerts)
    app.command()(stuck)
    app.command()(show)
    app.command()(history)
    app.command()(throughput)
    app.command("success-rate")(success_rate)
    app.command("dead-letters")(dead_letters)


def _report(
    ctx: typer.Context,
    read: Callable[[RetryQueue, Session], R],
    render: Callable[[R], Table],
    as_json: bool,
) -> None:
    """Read through the queue in a read-only session; print JSON or the rendered table."""
    current = state(ctx)
    with current.session() as session:
        rows = read(current.queue(), session)
    if as_json:
        print_json(rows)
        return
    print_table(render(rows))


def stats(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Counts per status, event type and plugin (--wide: also most retries, newest)."""
    _report(ctx, RetryQueue.stats, stats_table, as_json)


def alerts(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Items needing attention: dead letters, failed, stale locks, near the limit, old pending."""
    _report(ctx, RetryQueue.alerts, alerts_table, as_json)


def stuck(
    ctx: typer.Context,
    older_than: Annotated[
        str, typer.Option(help="Lock age: 90s, 30m, 1h, 1d.", show_default=True)
    ] = "1h",
    as_json: JsonOption = False,
) -> None:
    """Items processing for longer than --older-than (crashed or hung workers).

    The table shows who holds each lock, since when and for how long.
    """
    age_limit = timedelta(seconds=parse_duration(older_than, "--older-than"))
    current = state(ctx)
    with current.session() as session:
        queue = current.queue()
        rows = queue.stuck(session, age_limit)
        now = queue.now(session) or datetime.now(UTC)
    if as_json:
        print_json(rows)
        return
    print_table(stuck_table(rows, now, f"Processing for more than {older_than} ({len(rows)})"))


def show(
    ctx: typer.Context,
    item_id: Annotated[int, typer.Argument(metavar="ID", help="The item's id.")],
    as_json: JsonOption = False,
) -> None:
    """One item: every column, its event data and metadata."""
    current = state(ctx)
    with current.session() as session:
        item = current.queue().get(session, item_id)
        event_data, event_metadata = monitoring.item_payload(session, item_id)
        entries = current.queue().history(session, item_id)
    if as_json:
        print_json({**jsonable(item), "event_data": event_data, "event_metadata": event_metadata})
        return
    print_table(item_table(item, event_data, event_metadata))
    _print_last_traceback(entries)


def _print_last_traceback(entries: Sequence[HistoryEntry]) -> None:
    """The newest failed attempt's exception type and traceback, if one was recorded."""
    failed = [entry for entry in entries if entry.exception_type or entry.error_traceback]
    if not failed:
        return
    last = failed[-1]
    typer.echo(f"attempt {last.attempt_number} raised {last.exception_type or '?'}:")
    typer.echo((last.error_traceback or "(no traceback recorded)").rstrip())


def history(
    ctx: typer.Context,
    item_id: Annotated[int, typer.Argument(metavar="ID", help="The item's id.")],
    as_json: JsonOption = False,
) -> None:
    """An item's attempts and replays, oldest first (kept after the item is purged)."""
    current = state(ctx)
    with current.session() as session:
        queue = current.queue()
        entries = queue.history(session, item_id)
        if not entries:
            queue.get(session, item_id)  # ItemNotFound rather than an empty table
    if as_json:
        print_json(entries)
        return
    print_table(history_table(entries, item_id))
    _print_last_traceback(entries)


def throughput(
    ctx: typer.Context,
    hours: Annotated[int, typer.Option(help="How many hours back.", show_default=True)] = 24,
    as_json: JsonOption = False,
) -> None:
    """Items created per hour, with a bar chart."""
    current = state(ctx)
    with current.session() as session:
        rows = current.queue().items_per_hour(session, hours)
    if as_json:
        print_json(rows)
        return
    print_table(throughput_table(rows, hours))


def success_rate(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Share of finished items that completed, per event type (pending ones not counted)."""
    _report(ctx, RetryQueue.success_rate_by_event_type, success_table, as_json)


def dead_letters(
    ctx: typer.Context,
    group_by: Annotated[
        str,
        typer.Option(
            help="error_code, event_type, plugin, channel or fingerprint.", show_default=True
        ),
    ] = "error_code",
    limit: Annotated[
        int, typer.Option(help="--group-by fingerprint: the largest N groups.", min=1, max=10_000)
    ] = 50,
    as_json: JsonOption = False,
) -> None:
    """Dead-letter and failed items counted per group, with a sample error: triage before a
    replay. --group-by fingerprint groups the same failure (code and message with its values
    left out): replay or purge a group with --fingerprint F."""
    if group_by == "fingerprint":
        _report_error_groups(ctx, limit, as_json)
        return
    if group_by not in DEAD_LETTER_GROUPS:
        choices = ", ".join([*sorted(DEAD_LETTER_GROUPS), "fingerprint"])
        raise CliError(f"invalid --group-by {group_by!r}: expected {choices}")
    _report(
        ctx,
        lambda queue, session: queue.dead_letter_groups(session, group_by),
        lambda groups: dead_letter_table(groups, group_by),
        as_json,
    )


def _report_error_groups(ctx: typer.Context, limit: int, as_json: bool) -> None:
    """The largest error groups as a table, or as JSON with each group's pattern too."""
    current = state(ctx)
    with current.session() as session:
        groups = current.queue().error_groups(session, limit=limit)
    if as_json:
        print_json([{**jsonable(group), "pattern": group.pattern} for group in groups])
    else:
        print_table(error_group_table(groups))
