"""Read-only commands: stats, alerts, stuck, show, history, throughput, success rate, triage."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

import typer
from rich.table import Table
from sqlalchemy.orm import Session

from retryqueue import monitoring
from retryqueue.cli._context import (
    CliError,
    add_column,
    age,
    jsonable,
    new_table,
    parse_duration,
    print_json,
    print_table,
    short,
    state,
    text,
    when,
    wide,
)
from retryqueue.queue import RetryQueue
from retryqueue.results import (
    Alert,
    DeadLetterGroup,
    ErrorGroup,
    HistoryEntry,
    HourlyCount,
    ItemSnapshot,
    QueueStats,
    SuccessRate,
)
from retryqueue.statements import DEAD_LETTER_GROUPS

R = TypeVar("R")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
_BAR_WIDTH = 40
_EVENT_TYPE_WIDTH = 20  # wraps beyond this: "media.video.uploaded" stays on one line


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


def stats_table(rows: Sequence[QueueStats], now: datetime | None = None) -> Table:
    """The stats rows as a rich table, with a total line (--wide: every column).

    The narrow table shows the oldest item's age; --wide shows the times.
    """
    full = wide()
    now = now or datetime.now(UTC)
    table = new_table("Queue statistics")
    add_column(table, "status", keep=True)
    add_column(table, "event type", min_width=_EVENT_TYPE_WIDTH)
    add_column(table, "plugin")
    add_column(table, "count", keep=True, right=True)
    add_column(table, "avg retries", right=True)
    if full:
        add_column(table, "most retries", keep=True, right=True)
        add_column(table, "locked", keep=True, right=True)
        add_column(table, "with deadline", keep=True, right=True)
    add_column(table, "oldest" if full else "oldest age", keep=True, right=not full)
    if full:
        add_column(table, "newest", keep=True)
    for row in rows:
        table.add_row(
            text(row.status),
            row.event_type,
            text(row.plugin_name),
            str(row.count),
            f"{row.avg_retry_count:.2f}",
            *(
                [str(row.max_retry_count), str(row.locked_count), str(row.deadline_count)]
                if full
                else []
            ),
            when(row.oldest_created_at) if full else age(row.oldest_created_at, now),
            *([when(row.newest_created_at)] if full else []),
        )
    table.add_section()
    total = ["total", "", "", str(sum(row.count for row in rows))]
    table.add_row(*total, *[""] * (len(table.columns) - len(total)))
    return table


def alerts(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Items needing attention: dead letters, failed, stale locks, near the limit, old pending."""
    _report(ctx, RetryQueue.alerts, alerts_table, as_json)


def alerts_table(rows: Sequence[Alert]) -> Table:
    """The alert rows as a rich table (--wide adds plugin, channel and created)."""
    table = new_table(f"Alerts ({len(rows)})")
    add_column(table, "id", keep=True, right=True)
    add_column(table, "reason")
    add_column(table, "status", keep=True)
    add_column(table, "event type", min_width=_EVENT_TYPE_WIDTH)
    if wide():
        add_column(table, "plugin")
        add_column(table, "channel")
        add_column(table, "created", keep=True)
    add_column(table, "retries", keep=True, right=True)
    add_column(table, "error")
    for row in rows:
        table.add_row(
            str(row.item_id),
            row.reason,
            text(row.status),
            row.event_type,
            *(
                [text(row.plugin_name), text(row.channel_name), when(row.created_at)]
                if wide()
                else []
            ),
            f"{row.retry_count}/{row.max_retries}",
            short(row.error_message, 500 if wide() else 120),
        )
    return table


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


def stuck_table(rows: Sequence[ItemSnapshot], now: datetime, title: str) -> Table:
    """Locked items: the lock holder, the lock time and its age."""
    table = new_table(title)
    add_column(table, "id", keep=True, right=True)
    add_column(table, "event type", min_width=_EVENT_TYPE_WIDTH)
    if wide():
        add_column(table, "plugin")
        add_column(table, "created", keep=True)
    add_column(table, "locked by")
    add_column(table, "locked at", keep=True)
    add_column(table, "lock age", keep=True, right=True)
    add_column(table, "retries", keep=True, right=True)
    for row in rows:
        table.add_row(
            str(row.id),
            row.event_type,
            *([text(row.plugin_name), when(row.created_at)] if wide() else []),
            text(row.locked_by),
            when(row.locked_at),
            age(row.locked_at, now),
            f"{row.retry_count}/{row.max_retries}",
        )
    return table


def items_table(rows: Sequence[ItemSnapshot], title: str) -> Table:
    """Item snapshots as a rich table (--wide adds plugin, channel, error code, locked by)."""
    table = new_table(title)
    add_column(table, "id", keep=True, right=True)
    add_column(table, "status", keep=True)
    add_column(table, "event type", min_width=_EVENT_TYPE_WIDTH)
    if wide():
        add_column(table, "plugin")
        add_column(table, "channel")
        add_column(table, "error code")
    add_column(table, "retries", keep=True, right=True)
    add_column(table, "error")
    add_column(table, "created", keep=True)
    if wide():
        add_column(table, "locked by")
    for row in rows:
        table.add_row(
            str(row.id),
            text(row.status),
            row.event_type,
            *(
                [text(row.plugin_name), text(row.channel_name), text(row.last_error_code)]
                if wide()
                else []
            ),
            f"{row.retry_count}/{row.max_retries}",
            short(row.error_message, 500 if wide() else 120),
            when(row.created_at),
            *([text(row.locked_by)] if wide() else []),
        )
    return table


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
    table = new_table(f"Item {item.id}", show_header=False)
    add_column(table, "field", keep=True)
    add_column(table, "value")
    for name in ItemSnapshot.__dataclass_fields__:
        value = getattr(item, name)
        table.add_row(name, ", ".join(value) if name == "tags" else text(value))
    table.add_row("event_data", json.dumps(event_data, indent=2, default=str))
    table.add_row("event_metadata", json.dumps(event_metadata, indent=2, default=str))
    print_table(table)
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
    table = new_table(f"History of item {item_id}")
    add_column(table, "attempt", keep=True, right=True)
    add_column(table, "status", keep=True)
    add_column(table, "at", keep=True)
    add_column(table, "worker")
    if wide():
        add_column(table, "duration ms", right=True)
        add_column(table, "error code")
        add_column(table, "exception")
    add_column(table, "error")
    for entry in entries:
        table.add_row(
            str(entry.attempt_number),
            entry.status,
            when(entry.attempted_at),
            text(entry.worker_id),
            *(
                [text(entry.duration_ms), text(entry.error_code), text(entry.exception_type)]
                if wide()
                else []
            ),
            short(entry.error_message, 500 if wide() else 120),
        )
    print_table(table)
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
    filled = _fill_hours(rows)
    peak = max((row.count for row in filled), default=0)
    table = new_table(f"Items per hour, last {hours} h (UTC)")
    add_column(table, "hour", keep=True)
    add_column(table, "items", keep=True, right=True)
    add_column(table, "", keep=True)
    for row in filled:
        width = round(_BAR_WIDTH * row.count / peak) if peak else 0
        table.add_row(row.hour.strftime("%Y-%m-%d %H:00"), str(row.count), "█" * width)
    table.add_section()
    table.add_row("total", str(sum(row.count for row in rows)), "")
    print_table(table)


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
    """Share of finished items that completed, per event type (pending ones not counted)."""
    _report(ctx, RetryQueue.success_rate_by_event_type, _success_table, as_json)


def _success_table(rows: Sequence[SuccessRate]) -> Table:
    table = new_table("Success rate by event type (finished items)")
    add_column(table, "event type", min_width=_EVENT_TYPE_WIDTH)
    for name in ("finished", "completed", "success rate"):
        add_column(table, name, keep=True, right=True)
    for row in rows:
        table.add_row(row.event_type, str(row.total), str(row.completed), f"{row.success_rate:.1%}")
    return table


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
        lambda groups: _dead_letter_table(groups, group_by),
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
        print_table(_error_group_table(groups))


def _error_group_table(groups: Sequence[ErrorGroup]) -> Table:
    """A group per row: the fingerprint, count, first and last seen (one above the other),
    plugins (one per line), and the error code above a sample message."""
    full = wide()
    table = new_table("Dead letters and failed items by fingerprint")
    add_column(table, "fingerprint", keep=True)
    add_column(table, "count", keep=True, right=True)
    add_column(table, "first / last", keep=True)
    add_column(table, "plugins")
    add_column(table, "error code and sample message", min_width=24)
    for group in groups:
        table.add_row(
            text(group.fingerprint),
            str(group.count),
            f"{when(group.first_seen)}\n{when(group.last_seen)}",
            "\n".join(group.plugins) or "-",
            f"{text(group.error_code)}\n{short(group.sample_error, 500 if full else 160)}",
        )
    table.add_section()
    table.add_row("total", str(sum(group.count for group in groups)), "", "", "")
    return table


def _dead_letter_table(groups: Sequence[DeadLetterGroup], group_by: str) -> Table:
    table = new_table(f"Dead letters by {group_by}")
    add_column(table, group_by)
    add_column(table, "count", keep=True, right=True)
    add_column(table, "sample error")
    add_column(table, "oldest", keep=True)
    add_column(table, "newest", keep=True)
    for group in groups:
        table.add_row(
            text(group.key),
            str(group.count),
            short(group.sample_error, 500 if wide() else 120),
            when(group.oldest_created_at),
            when(group.newest_created_at),
        )
    table.add_section()
    table.add_row("total", str(sum(group.count for group in groups)), "", "", "")
    return table
