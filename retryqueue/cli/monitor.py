"""Read-only commands: stats, alerts, stuck, show, history, throughput, success rate, triage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Annotated, TypeVar

import typer
from rich.table import Table
from sqlalchemy.orm import Session

from retryqueue.cli._context import console, parse_duration, print_json, state, text
from retryqueue.queue import RetryQueue
from retryqueue.results import (
    Alert,
    DeadLetterGroup,
    HourlyCount,
    ItemSnapshot,
    QueueStats,
    SuccessRate,
)

R = TypeVar("R")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
_BAR_WIDTH = 40


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
    console().print(render(rows))


def stats(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Counts per status, event type and plugin."""
    _report(ctx, RetryQueue.stats, stats_table, as_json)


def stats_table(rows: Sequence[QueueStats]) -> Table:
    """The stats rows as a rich table, with a total line."""
    table = Table(title="Queue statistics")
    for name in (
        "status",
        "event type",
        "plugin",
        "count",
        "avg retries",
        "max retries",
        "locked",
        "with deadline",
        "oldest",
        "newest",
    ):
        table.add_column(
            name,
            justify="right"
            if name in ("count", "avg retries", "max retries", "locked", "with deadline")
            else "left",
        )
    for row in rows:
        table.add_row(
            text(row.status),
            row.event_type,
            text(row.plugin_name),
            str(row.count),
            f"{row.avg_retry_count:.2f}",
            str(row.max_retry_count),
            str(row.locked_count),
            str(row.deadline_count),
            text(row.oldest_created_at),
            text(row.newest_created_at),
        )
    table.add_section()
    table.add_row("total", "", "", str(sum(row.count for row in rows)), "", "", "", "", "", "")
    return table


def alerts(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Items needing attention: dead letters, failed, stale locks, near the limit, old pending."""
    _report(ctx, RetryQueue.alerts, alerts_table, as_json)


def alerts_table(rows: Sequence[Alert]) -> Table:
    """The alert rows as a rich table."""
    table = Table(title=f"Alerts ({len(rows)})")
    for name in ("id", "reason", "status", "event type", "plugin", "channel", "retries", "error"):
        table.add_column(name)
    for row in rows:
        table.add_row(
            str(row.item_id),
            row.reason,
            text(row.status),
            row.event_type,
            text(row.plugin_name),
            text(row.channel_name),
            f"{row.retry_count}/{row.max_retries}",
            _short(row.error_message),
        )
    return table


def stuck(
    ctx: typer.Context,
    older_than: Annotated[
        str, typer.Option(help="Lock age: 90s, 30m, 1h, 1d.", show_default=True)
    ] = "1h",
    as_json: JsonOption = False,
) -> None:
    """Items processing for longer than --older-than (crashed or hung workers)."""
    age = timedelta(seconds=parse_duration(older_than, "--older-than"))
    _report(
        ctx,
        lambda queue, session: queue.stuck(session, age),
        lambda rows: items_table(rows, f"Processing for more than {older_than} ({len(rows)})"),
        as_json,
    )


def items_table(rows: Sequence[ItemSnapshot], title: str) -> Table:
    """Item snapshots as a rich table."""
    table = Table(title=title)
    for name in (
        "id",
        "status",
        "event type",
        "plugin",
        "channel",
        "retries",
        "error code",
        "error",
        "created",
        "locked by",
    ):
        table.add_column(name)
    for row in rows:
        table.add_row(
            str(row.id),
            text(row.status),
            row.event_type,
            text(row.plugin_name),
            text(row.channel_name),
            f"{row.retry_count}/{row.max_retries}",
            text(row.last_error_code),
            _short(row.error_message),
            text(row.created_at),
            text(row.locked_by),
        )
    return table


def show(
    ctx: typer.Context,
    item_id: Annotated[int, typer.Argument(metavar="ID", help="The item's id.")],
    as_json: JsonOption = False,
) -> None:
    """One item's columns."""
    current = state(ctx)
    with current.session() as session:
        item = current.queue().get(session, item_id)
    if as_json:
        print_json(item)
        return
    table = Table(title=f"Item {item.id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for name in ItemSnapshot.__dataclass_fields__:
        value = getattr(item, name)
        table.add_row(name, ", ".join(value) if name == "tags" else text(value))
    console().print(table)


def history(
    ctx: typer.Context,
    item_id: Annotated[int, typer.Argument(metavar="ID", help="The item's id.")],
    as_json: JsonOption = False,
) -> None:
    """An item's attempts and replays, oldest first."""
    current = state(ctx)
    with current.session() as session:
        queue = current.queue()
        queue.get(session, item_id)  # ItemNotFound rather than an empty table
        entries = queue.history(session, item_id)
    if as_json:
        print_json(entries)
        return
    table = Table(title=f"History of item {item_id}")
    for name in ("attempt", "status", "at", "worker", "duration ms", "error code", "error"):
        table.add_column(name)
    for entry in entries:
        table.add_row(
            str(entry.attempt_number),
            entry.status,
            text(entry.attempted_at),
            text(entry.worker_id),
            text(entry.duration_ms),
            text(entry.error_code),
            _short(entry.error_message),
        )
    console().print(table)


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
    filled = _fill_hours(rows)
    peak = max((row.count for row in filled), default=0)
    table = Table(title=f"Items per hour, last {hours} h (UTC)")
    table.add_column("hour")
    table.add_column("items", justify="right")
    table.add_column("")
    for row in filled:
        width = round(_BAR_WIDTH * row.count / peak) if peak else 0
        table.add_row(row.hour.strftime("%Y-%m-%d %H:00"), str(row.count), "█" * width)
    table.add_section()
    table.add_row("total", str(sum(row.count for row in rows)), "")
    console().print(table)


def _fill_hours(rows: Sequence[HourlyCount]) -> list[HourlyCount]:
    """Hours without items, between the first and the last, as zero rows."""
    if not rows:
        return []
    by_hour = {row.hour: row.count for row in rows}
    filled, hour = [], rows[0].hour
    while hour <= rows[-1].hour:
        filled.append(HourlyCount(hour, by_hour.get(hour, 0)))
        hour += timedelta(hours=1)
    return filled


def success_rate(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Share of items that completed, per event type."""
    _report(ctx, RetryQueue.success_rate_by_event_type, _success_table, as_json)


def _success_table(rows: Sequence[SuccessRate]) -> Table:
    table = Table(title="Success rate by event type")
    for name in ("event type", "total", "completed", "success rate"):
        table.add_column(name, justify="left" if name == "event type" else "right")
    for row in rows:
        table.add_row(row.event_type, str(row.total), str(row.completed), f"{row.success_rate:.1%}")
    return table


def dead_letters(
    ctx: typer.Context,
    group_by: Annotated[
        str, typer.Option(help="error_code, event_type, plugin or channel.", show_default=True)
    ] = "error_code",
    as_json: JsonOption = False,
) -> None:
    """Dead letters counted per group, with a sample error: triage before a replay."""
    _report(
        ctx,
        lambda queue, session: queue.dead_letter_groups(session, group_by),
        lambda groups: _dead_letter_table(groups, group_by),
        as_json,
    )


def _dead_letter_table(groups: Sequence[DeadLetterGroup], group_by: str) -> Table:
    table = Table(title=f"Dead letters by {group_by}")
    for name in (group_by, "count", "sample error", "oldest", "newest"):
        table.add_column(name, justify="right" if name == "count" else "left")
    for group in groups:
        table.add_row(
            text(group.key),
            str(group.count),
            _short(group.sample_error),
            text(group.oldest_created_at),
            text(group.newest_created_at),
        )
    table.add_section()
    table.add_row("total", str(sum(group.count for group in groups)), "", "", "")
    return table


def _short(message: str | None, limit: int = 60) -> str:
    if not message:
        return "-"
    line = message.splitlines()[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"
