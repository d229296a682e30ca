"""Commands that write items: enqueue, replay (redrive) and purge.

Cleanup and rotate-keys live in :mod:`retryqueue.cli.maintenance`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from retryqueue.cli._context import (
    CliError,
    Progress,
    State,
    chunks,
    parse_duration,
    parse_json,
    parse_when,
    print_json,
    requested_by,
    state,
)
from retryqueue.cli._selection import (
    FingerprintOption,
    IdOption,
    StatusOption,
    Text,
    When,
    find_candidates,
    report_selection,
    selection_filter,
)
from retryqueue.models import RetryStatus
from retryqueue.results import ItemFilter

__all__ = ["Throttle", "enqueue", "purge", "register", "replay"]

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
_UNTHROTTLED_CHUNK = 500
_MAX_THROTTLED_CHUNK = 500


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command()(enqueue)
    app.command()(replay)
    app.command()(purge)


def enqueue(
    ctx: typer.Context,
    event_type: Annotated[str, typer.Argument(help="The event type, e.g. chat.message.")],
    event_data: Annotated[
        str | None, typer.Argument(help="Event data as JSON; omitted or '-': read stdin.")
    ] = None,
    channel: Annotated[str | None, typer.Option(help="channel_name")] = None,
    plugin: Annotated[str | None, typer.Option(help="plugin_name")] = None,
    metadata: Annotated[str | None, typer.Option(help="event_metadata as a JSON object")] = None,
    max_retries: Annotated[int, typer.Option(show_default=True)] = 3,
    retry_delay: Annotated[int, typer.Option(help="retry_delay_seconds", show_default=True)] = 60,
    backoff: Annotated[float, typer.Option(help="backoff_multiplier", show_default=True)] = 2.0,
    priority: Annotated[int, typer.Option(help="1..10, 10 first", show_default=True)] = 5,
    correlation_id: Annotated[str | None, typer.Option()] = None,
    tag: Annotated[list[str] | None, typer.Option(help="A tag (repeatable).")] = None,
    event_id: Annotated[str | None, typer.Option(help="UUID; enqueue is idempotent on it")] = None,
    run_at: Annotated[str | None, typer.Option(help="When first due (ISO 8601)")] = None,
    delay: Annotated[str | None, typer.Option(help="First due after (30s, 5m)")] = None,
    expires_at: Annotated[str | None, typer.Option(help="Expiry time (ISO 8601)")] = None,
    ttl: Annotated[str | None, typer.Option(help="Expires after (1h, 7d)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Add one item to the queue."""
    raw = sys.stdin.read() if event_data in (None, "-") else event_data
    fields: dict[str, Any] = {
        "channel_name": channel,
        "plugin_name": plugin,
        "event_metadata": None if metadata is None else parse_json(metadata, "--metadata"),
        "max_retries": max_retries,
        "retry_delay_seconds": retry_delay,
        "backoff_multiplier": backoff,
        "priority": priority,
        "correlation_id": correlation_id,
        "tags": tag or None,
        "event_id": event_id,
        "run_at": parse_when(run_at, "--run-at"),
        "delay": None if delay is None else parse_duration(delay, "--delay"),
        "expires_at": parse_when(expires_at, "--expires-at"),
        "ttl": None if ttl is None else parse_duration(ttl, "--ttl"),
    }
    data = parse_json(raw or "", "event data")
    current = state(ctx)
    with current.transaction() as session:
        queue = current.queue()
        expiry = fields["expires_at"]
        now = queue.now(session) or datetime.now(UTC)
        if expiry is not None and expiry <= now:
            raise CliError(
                f"invalid --expires-at {expires_at!r}: already past (now {now:%Y-%m-%d %H:%M:%S} "
                "UTC); the item could never run"
            )
        result = queue.enqueue(session, event_type, data, **fields)
    if as_json:
        print_json(result)
    elif result.created:
        typer.echo(f"enqueued item {result.id} (event_id {result.event_id})")
    else:
        typer.echo(f"already queued: item {result.id} has event_id {result.event_id}")


@dataclass
class Throttle:
    """Spaces out a redrive: item ``n`` is released no earlier than ``n / rate`` s after start.

    ``clock`` and ``sleep`` are injectable, so tests observe the waits without real time.
    """

    rate: float
    clock: Callable[[], float]
    sleep: Callable[[float], None]

    def __post_init__(self) -> None:
        self.started = self.clock()

    def wait_for(self, released: int) -> float:
        """Sleep until ``released`` items are allowed out; returns the seconds slept."""
        delay = self.started + released / self.rate - self.clock()
        if delay <= 0:
            return 0.0
        self.sleep(delay)
        return delay


def replay(
    ctx: typer.Context,
    status: StatusOption = None,
    item_id: IdOption = None,
    event_type: Text = None,
    plugin: Text = None,
    channel: Text = None,
    error_code: Text = None,
    fingerprint: FingerprintOption = None,
    created_after: When = None,
    created_before: When = None,
    failed_after: When = None,
    failed_before: When = None,
    limit: Annotated[int | None, typer.Option(help="Replay at most this many.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List, change nothing.")] = False,
    reset_retries: Annotated[
        bool, typer.Option("--reset-retries/--keep-retries", help="Start retry_count at 0.")
    ] = True,
    rate: Annotated[
        float | None, typer.Option(help="At most this many items per second.", min=0.001)
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Replay everything without asking.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Move dead_letter and failed items (or --status completed) back to pending, due now.

    Without any filter every dead_letter and failed item is selected: that asks first
    (--yes does not). Each replayed item gets a 'requeued' history row naming who replayed it.
    --fingerprint F replays one error group (see dead-letters --group-by fingerprint).
    """
    filters = [status, item_id, event_type, plugin, channel, error_code, fingerprint, limit]
    unfiltered = not any([*filters, created_after, created_before, failed_after, failed_before])
    current = state(ctx)
    item_filter = selection_filter(
        status,
        item_id,
        event_type,
        plugin,
        channel,
        error_code,
        created_after,
        created_before,
        failed_after,
        failed_before,
        limit,
        default=(RetryStatus.DEAD_LETTER, RetryStatus.FAILED),
    )
    item_filter, candidates = find_candidates(current, item_filter, fingerprint)
    if dry_run or not candidates:
        report_selection(candidates, as_json, "would be replayed", dry_run=dry_run)
        return
    if unfiltered and not yes:
        typer.confirm(
            f"No filter given: replay all {len(candidates)} dead_letter and failed item(s)?",
            abort=True,
            err=True,
        )
    ids = [item.id for item in candidates]
    moved = _redrive(current, ids, item_filter, reset_retries, rate, quiet=as_json)
    if as_json:
        print_json({"replayed": moved})
    else:
        typer.echo(f"replayed {len(moved)} item(s)" + (f" at {rate:g}/s" if rate else ""))


def _redrive(
    current: State,
    ids: list[int],
    item_filter: ItemFilter,
    reset_retries: bool,
    rate: float | None,
    *,
    quiet: bool,
) -> list[int]:
    """Requeue ``ids`` chunk by chunk, one transaction each, throttled to ``rate``."""
    throttle = None
    size = _UNTHROTTLED_CHUNK
    if rate is not None:
        throttle = Throttle(rate, current.deps.monotonic, current.deps.sleep)
        size = max(1, min(int(rate), _MAX_THROTTLED_CHUNK))
    queue, who = current.queue(), requested_by()
    moved: list[int] = []
    with Progress("replaying", len(ids), quiet=quiet) as advance:
        for chunk in chunks(ids, size):
            if throttle is not None:
                throttle.wait_for(len(moved))
            chunk_filter = ItemFilter(statuses=item_filter.statuses, ids=chunk)
            with current.transaction() as session:
                done = queue.requeue(
                    session, chunk_filter, reset_retries=reset_retries, requested_by=who
                )
            moved.extend(done)
            advance(len(chunk))
    return moved


def purge(
    ctx: typer.Context,
    status: StatusOption = None,
    item_id: IdOption = None,
    event_type: Text = None,
    plugin: Text = None,
    channel: Text = None,
    error_code: Text = None,
    fingerprint: FingerprintOption = None,
    created_after: When = None,
    created_before: When = None,
    failed_after: When = None,
    failed_before: When = None,
    limit: Annotated[int | None, typer.Option(help="Delete at most this many.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List, change nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete the selected items (default statuses: dead_letter, failed); history is kept.

    Items being processed are never deleted. --fingerprint F purges one error group (see
    dead-letters --group-by fingerprint).
    """
    current = state(ctx)
    item_filter = selection_filter(
        status,
        item_id,
        event_type,
        plugin,
        channel,
        error_code,
        created_after,
        created_before,
        failed_after,
        failed_before,
        limit,
        default=(RetryStatus.DEAD_LETTER, RetryStatus.FAILED),
    )
    item_filter, candidates = find_candidates(current, item_filter, fingerprint)
    if dry_run or not candidates:
        report_selection(candidates, as_json, "would be purged", dry_run=dry_run)
        return
    statuses = ", ".join(RetryStatus(s).value for s in item_filter.statuses)
    if not yes:
        typer.confirm(f"Delete {len(candidates)} item(s) ({statuses})?", abort=True, err=True)
    deleted: list[int] = []
    queue = current.queue()
    with Progress("purging", len(candidates), quiet=as_json) as advance:
        for chunk in chunks([item.id for item in candidates], _UNTHROTTLED_CHUNK):
            chosen = ItemFilter(statuses=item_filter.statuses, ids=chunk)
            with current.transaction() as session:
                deleted.extend(queue.purge(session, chosen))
            advance(len(chunk))
    if as_json:
        print_json({"purged": deleted})
    else:
        typer.echo(f"purged {len(deleted)} item(s)")
