"""Housekeeping commands that rewrite the store in batches: cleanup and rotate-keys."""

from __future__ import annotations

from typing import Annotated

import typer

from retryqueue import encryption, monitoring
from retryqueue.cli._context import CliError, Progress, print_json, state
from retryqueue.results import CleanupResult

__all__ = ["cleanup", "register", "rotate_keys"]

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command()(cleanup)
    app.command("rotate-keys")(rotate_keys)


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
