"""The operator's outcomes by item id: complete, fail, release (``force=True``).

Workers record outcomes under their lease token; these commands are the explicit path for
a person acting on an item by id, whoever holds it. A worker still running the item is
refused its own outcome afterwards. Each command says what it changed.
"""

from __future__ import annotations

from typing import Annotated

import typer

from retryqueue.cli._context import CliError, print_json, requested_by, state

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Ids = Annotated[list[int], typer.Argument(help="Item ids.")]


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command()(complete)
    app.command()(fail)
    app.command()(release)


def complete(ctx: typer.Context, item_ids: Ids, as_json: JsonOption = False) -> None:
    """Mark pending or processing items completed by hand (e.g. done outside the queue).

    The history row names you (cli:USER) as the worker.
    """
    current, who = state(ctx), requested_by()
    with current.transaction() as session:
        queue = current.queue()
        done = [i for i in item_ids if queue.complete(session, i, who, force=True)]
    _report(done, item_ids, "completed", as_json)


def fail(
    ctx: typer.Context,
    item_ids: Ids,
    message: Annotated[str, typer.Option(help="The error message recorded.")] = "failed by hand",
    error_code: Annotated[str, typer.Option(help="The error code recorded.")] = "MANUAL",
    retry: Annotated[
        bool,
        typer.Option("--retry/--no-retry", help="Schedule a retry (default: failed at once)."),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Record a failed attempt on pending or processing items by hand.

    Without ``--retry`` the items become ``failed`` at once; with it they follow their
    retry policy (a retry, or dead_letter once out of retries).
    """
    current, who = state(ctx), requested_by()
    with current.transaction() as session:
        queue = current.queue()
        done = [
            i
            for i in item_ids
            if queue.fail(session, i, who, message, error_code, retryable=retry, force=True)
        ]
    _report(done, item_ids, "failed", as_json)


def release(ctx: typer.Context, item_ids: Ids, as_json: JsonOption = False) -> None:
    """Give processing items back to pending now, whoever holds them (not an attempt).

    For an item whose worker is known to be gone: it need not wait for its lock to expire.
    """
    current = state(ctx)
    with current.transaction() as session:
        done = current.queue().release(session, requested_by(), item_ids, force=True)
    _report(done, item_ids, "released", as_json)


def _report(done: list[int], asked: list[int], what: str, as_json: bool) -> None:
    skipped = sorted(set(asked) - set(done))
    if as_json:
        print_json({what: sorted(done), "unchanged": skipped})
        return
    typer.echo(
        f"{what} {len(done)} item(s)" + (f": {', '.join(map(str, sorted(done)))}" if done else "")
    )
    if skipped:
        typer.echo(
            f"unchanged (not found, or not in a state that allows it): "
            f"{', '.join(map(str, skipped))}",
            err=True,
        )
    if not done:
        raise CliError(f"no item {what}")
