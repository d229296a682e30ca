"""``retryqueue workers``: the live workers from the registry (like the dashboard's page)."""

from __future__ import annotations

import typer
from rich.table import Table

from retryqueue.cli._context import console, print_json, state, text
from retryqueue.cli.monitor import JsonOption
from retryqueue.registry import WorkerInfo, live_workers

__all__ = ["register", "workers", "workers_table"]


def register(app: typer.Typer) -> None:
    """Add the ``workers`` command to the root app."""
    app.command("workers")(workers)


def workers(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Live workers: host, pid, id, kind, settings, heartbeat, items held, last hour."""
    current = state(ctx)
    with current.session() as session:
        rows = live_workers(session, current.queue().now(session))
    if as_json:
        print_json(rows)
        return
    console().print(workers_table(rows))


def workers_table(rows: list[WorkerInfo]) -> Table:
    """The workers as a table."""
    table = Table(title="Workers (heartbeat within 10 minutes)")
    for name in (
        "host", "pid", "worker id", "kind", "concurrency", "batch", "started",
        "heartbeat", "held", "attempts 1h", "failures 1h",
    ):  # fmt: skip
        table.add_column(name)
    for row in rows:
        table.add_row(
            row.host,
            str(row.pid),
            row.worker_id,
            row.kind,
            str(row.concurrency),
            str(row.batch_size),
            text(row.started_at),
            text(row.heartbeat_at),
            str(row.held),
            str(row.attempts_last_hour),
            str(row.failures_last_hour),
        )
    return table
