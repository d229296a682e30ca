"""The dashboard's reads of items: keyset pages, capped counts, one item and its history,
the ids an action acts on, and success per event type. Elsewhere: outcomes per hour
(:mod:`.hourly`), the audit trail (:mod:`.audit`), the worker registry (:mod:`.registry`),
error groups (:mod:`.groups`).

Nothing here counts a whole table: counts read at most ``cap + 1`` index entries, and
lists are keyset-paginated (never OFFSET).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    String,
    Text,
    and_,
    case,
    cast,
    exists,
    func,
    literal,
    or_,
    select,
    type_coerce,
)
from sqlalchemy.dialects import postgresql

from retryqueue.models import RetryHistory, RetryItem, RetryStatus
from retryqueue.results import ItemQuery
from retryqueue.statements._base import AnySelect, _status_in, _status_is, now_expr
from retryqueue.types import UTCDateTime

__all__ = [
    "LIST_COLUMNS",
    "SORT_COLUMNS",
    "actionable_ids",
    "capped_count",
    "history_rows",
    "item_page",
    "item_row",
    "query_clauses",
    "status_counts",
    "success_by_event_type",
]

SORT_COLUMNS: dict[str, Any] = {
    "id": RetryItem.id,
    "created_at": RetryItem.created_at,
    "next_retry_at": RetryItem.next_retry_at,
    "priority": RetryItem.priority,
    "retry_count": RetryItem.retry_count,
}

# The error message raw (never decrypted by the column type: an encrypted message must not
# fail a whole page when no key is configured; the caller opens it).
_RAW_ERROR = type_coerce(RetryItem.error_message, Text()).label("error_message")

LIST_COLUMNS = (
    RetryItem.id,
    RetryItem.event_type,
    RetryItem.plugin_name,
    RetryItem.channel_name,
    RetryItem.status,
    RetryItem.priority,
    RetryItem.retry_count,
    RetryItem.max_retries,
    RetryItem.last_error_code,
    RetryItem.error_fingerprint,
    _RAW_ERROR,
    RetryItem.created_at,
    RetryItem.next_retry_at,
    RetryItem.last_attempted_at,
    RetryItem.correlation_id,
)


def _has_tag(dialect: str, tag: str) -> ColumnElement[bool]:
    if dialect == "postgresql":
        return type_coerce(RetryItem.tags, postgresql.ARRAY(Text())).contains(
            cast(postgresql.array([tag]), postgresql.ARRAY(Text()))
        )
    if dialect in ("mysql", "mariadb"):
        return func.json_contains(RetryItem.tags, func.json_quote(tag)) == 1
    values = func.json_each(type_coerce(RetryItem.tags, JSON())).table_valued("value")
    return exists(select(1).select_from(values).where(values.c.value == tag))


def query_clauses(query: ItemQuery, dialect: str) -> list[ColumnElement[bool]]:
    """The WHERE clauses of an :class:`ItemQuery`'s filters (not its cursor)."""
    clauses: list[ColumnElement[bool]] = []
    if query.statuses:
        clauses.append(RetryItem.status.in_(list(query.statuses)))
    if query.ids is not None:
        clauses.append(RetryItem.id.in_(list(query.ids)))
    equal: list[tuple[Any, object]] = [
        (RetryItem.event_type, query.event_type),
        (RetryItem.plugin_name, query.plugin_name),
        (RetryItem.channel_name, query.channel_name),
        (RetryItem.correlation_id, query.correlation_id),
        (RetryItem.last_error_code, query.error_code),
    ]
    clauses.extend(column == wanted for column, wanted in equal if wanted is not None)
    if query.fingerprint == "none":
        clauses.append(RetryItem.error_fingerprint.is_(None))
    elif query.fingerprint is not None:
        clauses.append(RetryItem.error_fingerprint == query.fingerprint)
    if query.tag is not None:
        clauses.append(RetryItem.tags.is_not(None))
        clauses.append(_has_tag(dialect, query.tag))
    if query.error_text is not None:
        message = type_coerce(RetryItem.error_message, String())
        clauses.append(func.lower(message).contains(query.error_text.lower(), autoescape=True))
    if query.created_after is not None:
        clauses.append(RetryItem.created_at >= literal(query.created_after, UTCDateTime()))
    if query.created_before is not None:
        clauses.append(RetryItem.created_at < literal(query.created_before, UTCDateTime()))
    return clauses


def _typed(sort: str, value: Any) -> ColumnElement[Any]:
    column = SORT_COLUMNS[sort]
    return (
        literal(value, UTCDateTime())
        if isinstance(value, datetime)
        else literal(value, column.type)
    )


def item_page(query: ItemQuery, dialect: str) -> AnySelect:
    """One page (``limit + 1`` rows, to tell whether another follows) of an ItemQuery.

    With ``before`` the page is read backwards from that cursor (the order reversed): the
    caller reverses the rows back.
    """
    column = SORT_COLUMNS[query.sort]
    clauses = query_clauses(query, dialect)
    cursor = query.before if query.before is not None else query.after
    # Reading backwards walks the other way: ascending becomes descending.
    descending = query.descending != (query.before is not None)
    if cursor is not None:
        value, last_id = cursor
        if query.sort == "id":
            clauses.append(RetryItem.id < last_id if descending else RetryItem.id > last_id)
        elif descending:
            bound = _typed(query.sort, value)
            clauses.append(or_(column < bound, and_(column == bound, RetryItem.id < last_id)))
        else:
            bound = _typed(query.sort, value)
            clauses.append(or_(column > bound, and_(column == bound, RetryItem.id > last_id)))
    if query.sort == "id":
        order: tuple[Any, ...] = (RetryItem.id.desc() if descending else RetryItem.id,)
    elif descending:
        order = (column.desc(), RetryItem.id.desc())
    else:
        order = (column, RetryItem.id)
    return select(*LIST_COLUMNS).where(*clauses).order_by(*order).limit(query.limit + 1)


def capped_count(clauses: Sequence[ColumnElement[bool]], cap: int) -> AnySelect:
    """How many items match, reading at most ``cap + 1`` of them."""
    matching = select(RetryItem.id).where(*clauses).limit(cap + 1).subquery()
    return select(func.count()).select_from(matching)


def status_counts(at: datetime | None, cap: int) -> AnySelect:
    """One row: a capped count per status, and the due-now and scheduled pending backlogs."""
    now = now_expr(at)

    def count(*clauses: ColumnElement[bool]) -> Any:
        return capped_count(clauses, cap).scalar_subquery()

    columns = [count(_status_is(status)).label(status.value) for status in RetryStatus]
    pending = _status_is(RetryStatus.PENDING)
    columns.append(count(pending, RetryItem.next_retry_at <= now).label("due_now"))
    columns.append(count(pending, RetryItem.next_retry_at > now).label("scheduled"))
    columns.append(now.label("now"))
    return select(*columns)


def actionable_ids(query: ItemQuery, dialect: str, action: str, cap: int) -> Any:
    """Ids (oldest first, at most ``cap``) a replay or purge of an ItemQuery acts on.

    Replay takes finished items (dead_letter and failed; completed only when the query
    names it); purge anything not being processed.
    """
    clauses = query_clauses(query, dialect)
    if action == "replay":
        statuses = [RetryStatus.DEAD_LETTER, RetryStatus.FAILED]
        if RetryStatus.COMPLETED in query.statuses:
            statuses.append(RetryStatus.COMPLETED)
        clauses.append(_status_in(*statuses))
    else:
        clauses.append(~_status_is(RetryStatus.PROCESSING))
    return select(RetryItem.id).where(*clauses).order_by(RetryItem.id).limit(cap)


def item_row(item_id: int) -> AnySelect:
    """Every column of one item, with event_data and error_message raw (sealed or not)."""
    columns = [
        type_coerce(column, JSON()).label(name)
        if name == "event_data"
        else type_coerce(column, Text()).label(name)
        if name == "error_message"
        else column
        for name, column in RetryItem.__table__.columns.items()
    ]
    return select(*columns).where(RetryItem.id == item_id)


def success_by_event_type(limit: int) -> AnySelect:
    """Per event type, of the newest ``limit`` items: all, completed, gave up."""
    newest = (
        select(RetryItem.event_type, RetryItem.status)
        .order_by(RetryItem.id.desc())
        .limit(limit)
        .subquery("newest")
    )
    completed = func.sum(case((newest.c.status == RetryStatus.COMPLETED, 1), else_=0))
    given_up = func.sum(
        case((newest.c.status.in_([RetryStatus.DEAD_LETTER, RetryStatus.FAILED]), 1), else_=0)
    )
    return (
        select(newest.c.event_type, func.count(), completed, given_up)
        .group_by(newest.c.event_type)
        .order_by(newest.c.event_type)
    )


def history_rows(item_id: int) -> AnySelect:
    """An item's history, oldest first, with its texts raw (sealed or not)."""
    columns = [
        type_coerce(column, Text()).label(name)
        if name in ("error_message", "error_traceback")
        else column
        for name, column in RetryHistory.__table__.columns.items()
    ]
    return (
        select(*columns)
        .where(RetryHistory.retry_queue_id == item_id)
        .order_by(RetryHistory.attempted_at, RetryHistory.id)
    )
