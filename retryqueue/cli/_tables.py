"""The rich tables the read-only commands print: one builder per report, no database access.

Each builder takes rows already read (and ``--wide`` through :func:`wide`) and returns a
:class:`~rich.table.Table`; the commands in :mod:`retryqueue.cli.monitor` read and print.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.table import Table

from retryqueue.cli._context import add_column, age, new_table, short, text, when, wide
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

__all__ = [
    "alerts_table",
    "dead_letter_table",
    "error_group_table",
    "history_table",
    "item_table",
    "items_table",
    "stats_table",
    "stuck_table",
    "success_table",
    "throughput_table",
]

_BAR_WIDTH = 40
_EVENT_TYPE_WIDTH = 20  # wraps beyond this: "media.video.uploaded" stays on one line


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


def item_table(item: ItemSnapshot, event_data: Any, event_metadata: Any) -> Table:
    """One item as a two-column table: every field, then its event data and metadata."""
    table = new_table(f"Item {item.id}", show_header=False)
    add_column(table, "field", keep=True)
    add_column(table, "value")
    for name in ItemSnapshot.__dataclass_fields__:
        value = getattr(item, name)
        table.add_row(name, ", ".join(value) if name == "tags" else text(value))
    table.add_row("event_data", json.dumps(event_data, indent=2, default=str))
    table.add_row("event_metadata", json.dumps(event_metadata, indent=2, default=str))
    return table


def history_table(entries: Sequence[HistoryEntry], item_id: int) -> Table:
    """An item's attempts, oldest first (--wide adds duration, error code and exception)."""
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
    return table


def throughput_table(rows: Sequence[HourlyCount], hours: int) -> Table:
    """Items per hour with a bar each, empty hours included, and a total line."""
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
    return table


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


def success_table(rows: Sequence[SuccessRate]) -> Table:
    """Finished, completed and the success rate per event type."""
    table = new_table("Success rate by event type (finished items)")
    add_column(table, "event type", min_width=_EVENT_TYPE_WIDTH)
    for name in ("finished", "completed", "success rate"):
        add_column(table, name, keep=True, right=True)
    for row in rows:
        table.add_row(row.event_type, str(row.total), str(row.completed), f"{row.success_rate:.1%}")
    return table


def error_group_table(groups: Sequence[ErrorGroup]) -> Table:
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


def dead_letter_table(groups: Sequence[DeadLetterGroup], group_by: str) -> Table:
    """Dead letters counted per ``group_by`` value, with a sample error and the time span."""
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
