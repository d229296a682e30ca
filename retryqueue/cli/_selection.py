"""The item selection that replay and purge share: their filter options, the filter those
options build, the items it selects now, and the report of a dry run or an empty selection.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

import typer

from retryqueue import monitoring
from retryqueue.cli._context import State, parse_when, print_json, print_table
from retryqueue.cli._tables import items_table
from retryqueue.models import RetryStatus
from retryqueue.results import ItemFilter

__all__ = [
    "FingerprintOption",
    "IdOption",
    "StatusOption",
    "Text",
    "When",
    "find_candidates",
    "report_selection",
    "selection_filter",
]

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


def find_candidates(
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


def selection_filter(
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
    """The filter the options give (``--fingerprint`` is resolved by :func:`find_candidates`)."""
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


def report_selection(candidates: list[Any], as_json: bool, what: str, *, dry_run: bool) -> None:
    """What a dry run would change, or that the selection is empty: a table or JSON."""
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
