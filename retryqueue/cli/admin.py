"""Commands that write: enqueue, replay (redrive), purge and cleanup."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from retryqueue import encryption, monitoring
from retryqueue.cli._context import (
    CliError,
    Progress,
    State,
    chunks,
    parse_duration,
    parse_json,
    parse_when,
    print_json,
    print_table,
    requested_by,
    state,
)
from retryqueue.cli.monitor import items_table
from retryqueue.models import RetryStatus
from retryqueue.results import CleanupResult, ItemFilter

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
_UNTHROTTLED_CHUNK = 500
_MAX_THROTTLED_CHUNK = 500


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command()(enqueue)
    app.command()(replay)
    app.command()(purge)
    app.command()(cleanup)
    app.command("rotate-keys")(rotate_keys)


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


# -- selection shared by replay and purge ---------------------------------------------------

StatusOption = Annotated[
    list[RetryStatus] | None,
    typer.Option("--status", help="Status to select (repeatable).", case_sensitive=False),
]
IdOption = Annotated[list[int] | None, typer.Option("--id", help="Item id (repeatable).")]
Text = Annotated[str | None, typer.Option()]
When = Annotated[str | None, typer.Option(help="ISO 8601 time, or a duration ago (24h).")]


FingerprintOption = Annotated[
    str | None,
    typer.Option(
        help="An error group: its fingerprint (dead-letters --group-by fingerprint), or the "
        "first 4+ hex digits of it when only one group starts so; 'none': no fingerprint."
    ),
]


def _candidates(
    current: State, item_filter: ItemFilter, fingerprint: str | None
) -> tuple[ItemFilter, list[Any]]:
    """The filter with ``--fingerprint`` resolved, and the items it selects now.

    A malformed or ambiguous fingerprint is an error; one that matches no group selects
    nothing (reported as such, not as an error).
    """
    with current.session() as session:
        if fingerprint is not None:
            resolved = monitoring.resolve_fingerprint(session, fingerprint, item_filter.statuses)
            if resolved is None:
                return item_filter, []
            item_filter = replace(item_filter, fingerprint=resolved)
        return item_filter, current.queue().find(session, item_filter)


def _selection(
    statuses: list[RetryStatus] | None,
    ids: list[int] | None,
    event_type: str | None,
    plugin: str | None,
    channel: str | None,
    error_code: str | None,
    created_after: str | None,
    created_before: str | None,
    failed_after: str | None,
    failed_before: str | None,
    limit: int | None,
    default: tuple[RetryStatus, ...],
) -> ItemFilter:
    """The filter the options give (``--fingerprint`` is resolved by :func:`_candidates`)."""
    return ItemFilter(
        statuses=tuple(statuses) if statuses else default,
        ids=ids or None,
        event_type=event_type,
        plugin_name=plugin,
        channel_name=channel,
        error_code=error_code,
        created_after=parse_when(created_after, "--created-after"),
        created_before=parse_when(created_before, "--created-before"),
        failed_after=parse_when(failed_after, "--failed-after"),
        failed_before=parse_when(failed_before, "--failed-before"),
        limit=limit,
    )


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
    item_filter = _selection(
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
    item_filter, candidates = _candidates(current, item_filter, fingerprint)
    if dry_run or not candidates:
        _report_selection(candidates, as_json, "would be replayed", dry_run=dry_run)
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
    item_filter = _selection(
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
    item_filter, candidates = _candidates(current, item_filter, fingerprint)
    if dry_run or not candidates:
        _report_selection(candidates, as_json, "would be purged", dry_run=dry_run)
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


def _report_selection(candidates: list[Any], as_json: bool, what: str, *, dry_run: bool) -> None:
    if as_json:
        print_json({"dry_run": dry_run, "count": len(candidates), "items": candidates})
        return
    if not candidates:
        typer.echo(
            "no item matches the selection: nothing " + ("would change" if dry_run else "changed")
        )
        return
    print_table(items_table(candidates, f"{len(candidates)} item(s) {what}"))
    typer.echo(f"{len(candidates)} item(s) {what}")


def cleanup(
    ctx: typer.Context,
    retention_days: Annotated[
        float, typer.Option(help="Keep finished items this many days.", show_default=True)
    ] = 7,
    batch_size: Annotated[int, typer.Option(help="Rows per batch.", show_default=True)] = 1000,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count, then roll back: nothing changes.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete finished items past the retention, in batches.

    First moves pending items past their expiry to dead_letter (code EXPIRED), so that
    nothing abandoned unrun is deleted unseen. Also deletes history older than twice the
    retention. Batches are committed one by one (so live workers are never blocked for
    long); --dry-run runs them in one transaction that is rolled back.
    """
    current = state(ctx)
    queue = current.queue()
    total = CleanupResult()
    with current.session() as session:
        backlog = (
            None
            if as_json
            else monitoring.cleanup_backlog(session, queue.now(session), retention_days)
        )
        session.rollback()
    with current.session() as session, Progress("cleaning up", backlog, quiet=as_json) as advance:
        for part in queue.iter_cleanup(session, retention_days, batch_size=batch_size):
            if not dry_run:
                session.commit()
            total = total + part
            advance(part.deleted_count + part.history_deleted_count + part.expired_count)
        session.rollback()
    if as_json:
        print_json({"dry_run": dry_run, **_cleanup_dict(total)})
        return
    verb = "would delete" if dry_run else "deleted"
    dropped = f", {total.partitions_dropped} month partition(s)" if total.partitions_dropped else ""
    typer.echo(
        f"{verb} {total.deleted_count} item(s){dropped}, {total.history_deleted_count} "
        f"history row(s) and {total.circuit_events_deleted} circuit audit row(s); "
        f"{total.expired_count} expired item(s) moved to dead_letter"
    )


def _cleanup_dict(total: CleanupResult) -> dict[str, int]:
    return {name: getattr(total, name) for name in CleanupResult.__dataclass_fields__}


def rotate_keys(
    ctx: typer.Context,
    batch_size: Annotated[int, typer.Option(help="Rows per transaction.", show_default=True)] = 500,
    as_json: JsonOption = False,
) -> None:
    """Re-encrypt event data and error messages under the newest key, in batches.

    Keys come from RETRYQUEUE_ENCRYPTION_KEYS (comma-separated, newest first); every key
    listed can still decrypt. Drop the old key once this has run.
    """
    if encryption.active() is None:
        raise CliError(f"no encryption keys configured: set {encryption.KEYS_ENV} (newest first)")
    current = state(ctx)
    total = 0
    with current.session() as session:
        rows = sum(monitoring.table_sizes(session))
        session.rollback()
        with Progress("re-encrypting", rows, quiet=as_json) as advance:
            for rewritten in current.queue().iter_rotate_keys(session, batch_size=batch_size):
                session.commit()
                total += rewritten
                advance(rewritten)
    if as_json:
        print_json({"rewritten": total})
    else:
        typer.echo(f"re-encrypted {total} stored value(s) under the newest key")
