"""Reading and rewriting items' ``event_metadata`` (trace context kept by instrumentation)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Select, Table, Update, bindparam, select, update

from retryqueue.models import RetryItem

__all__ = ["item_metadata", "set_metadata"]


def item_metadata(item_ids: Sequence[int]) -> Select[tuple[int, dict[str, Any] | None]]:
    """The id and event_metadata of the given items."""
    return select(RetryItem.id, RetryItem.event_metadata).where(RetryItem.id.in_(item_ids))


def set_metadata() -> Update:
    """Replace one item's event_metadata; run with ``item_id`` and ``new_metadata`` rows
    (an executemany)."""
    table = cast(Table, RetryItem.__table__)
    return (
        update(table)
        .where(table.c.id == bindparam("item_id"))
        .values(event_metadata=bindparam("new_metadata"))
    )
