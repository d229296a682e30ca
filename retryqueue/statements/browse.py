"""The dashboard's reads: keyset pages of items, capped counts, outcomes per hour, and
the audit trail of dashboard actions (error groups: :mod:`retryqueue.statements.groups`).

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
    Insert,
    Select,
    String,
    Text,
    Update,
    and_,
    case,
    cast,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql

from retryqueue.models import (
    HOURLY_MARKER,
    RetryDashboardAudit,
    RetryHistory,
    RetryHourlyOutcome,
    RetryItem,
    RetryStatus,
    RetryWorker,
)
from retryqueue.results import ItemQuery
from retryqueue.statements._base import (
    AnySelect,
    _status_in,
    _status_is,
    after,
    now_expr,
)
from retryqueue.types import UTCDateTime

__all__ = [
    "LIST_COLUMNS",
    "SORT_COLUMNS",
    "actionable_ids",
    "audit_entries",
    "capped_count",
    "finish_audit",
    "history_rows",
    "hour_outcomes",
    "hourly_rows",
    "insert_audit",
    "insert_hourly",
    "insert_worker",
    "item_page",
    "item_row",
    "live_workers",
    "query_clauses",
    "rolled_up_hours",
    "status_counts",
    "stop_worker",
    "success_by_event_type",
    "touch_worker",
    "update_worker",
    "worker_attempts",
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


def _attempted_between(start: datetime, end: datetime) -> ColumnElement[bool]:
    return and_(
        RetryHistory.attempted_at >= literal(start, UTCDateTime()),
        RetryHistory.attempted_at < literal(end, UTCDateTime()),
    )


def hour_outcomes(start: datetime, end: datetime, *, plugin: bool) -> AnySelect:
    """Attempts made in ``[start, end)`` per outcome (history status), counted in history.

    With ``plugin``, per plugin too: the item's plugin, ``""`` when it has none or is no
    longer in the queue (a LEFT JOIN by primary key).
    """
    window = _attempted_between(start, end)
    if not plugin:
        return (
            select(literal("").label("plugin_name"), RetryHistory.status, func.count())
            .where(window)
            .group_by(RetryHistory.status)
        )
    name = func.coalesce(RetryItem.plugin_name, "")
    return (
        select(name.label("plugin_name"), RetryHistory.status, func.count())
        .select_from(RetryHistory)
        .outerjoin(RetryItem, RetryItem.id == RetryHistory.retry_queue_id)
        .where(window)
        .group_by(name, RetryHistory.status)
    )


def _hour_between(start: datetime, end: datetime) -> ColumnElement[bool]:
    return and_(
        RetryHourlyOutcome.hour >= literal(start, UTCDateTime()),
        RetryHourlyOutcome.hour < literal(end, UTCDateTime()),
    )


def rolled_up_hours(start: datetime, end: datetime) -> Select[datetime]:
    """The hours in ``[start, end)`` already rolled up into ``daz_retry_hourly``."""
    return select(RetryHourlyOutcome.hour).where(
        _hour_between(start, end), RetryHourlyOutcome.outcome == HOURLY_MARKER
    )


def hourly_rows(start: datetime, end: datetime, *, plugin: bool) -> AnySelect:
    """Rolled-up attempts of the hours in ``[start, end)``: (hour, plugin, outcome, count),
    summed over plugins (plugin ``""``) unless ``plugin``; marker rows included."""
    hour, outcome = RetryHourlyOutcome.hour, RetryHourlyOutcome.outcome
    if plugin:
        return select(
            hour, RetryHourlyOutcome.plugin_name, outcome, RetryHourlyOutcome.attempts
        ).where(_hour_between(start, end))
    return (
        select(
            hour, literal("").label("plugin_name"), outcome, func.sum(RetryHourlyOutcome.attempts)
        )
        .where(_hour_between(start, end))
        .group_by(hour, outcome)
    )


def insert_hourly() -> Insert:
    """INSERT of rolled-up rows (executemany: hour, plugin_name, outcome, attempts)."""
    return insert(RetryHourlyOutcome)


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


def insert_audit(at: datetime | None) -> Insert:
    """INSERT of one audit record, RETURNING its id where the dialect can."""
    return insert(RetryDashboardAudit).values(occurred_at=now_expr(at))


def finish_audit(
    at: datetime | None, audit_id: int, affected: int, *, finished: bool, detail: str | None
) -> Update:
    """Record how many items an audited action has changed, and whether it has finished."""
    values: dict[str, Any] = {"affected": affected, "detail": detail}
    if finished:
        values["finished_at"] = now_expr(at)
    return update(RetryDashboardAudit).where(RetryDashboardAudit.id == audit_id).values(**values)


def audit_entries(limit: int, before_id: int | None) -> AnySelect:
    """The newest audit records (older than ``before_id``), newest first."""
    stmt = select(RetryDashboardAudit)
    if before_id is not None:
        stmt = stmt.where(RetryDashboardAudit.id < before_id)
    return stmt.order_by(RetryDashboardAudit.id.desc()).limit(limit)


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


# -- the worker registry (daz_retry_workers) ------------------------------------------------


def insert_worker(at: datetime | None) -> Insert:
    """INSERT of one worker row, started and heartbeating now."""
    now = now_expr(at)
    return insert(RetryWorker).values(started_at=now, heartbeat_at=now)


def update_worker(at: datetime | None, worker_id: str) -> Update:
    """UPDATE of a worker's row to describe it again, started and heartbeating now
    (registering over the row of an earlier run with the same id: no DELETE needed)."""
    now = now_expr(at)
    return (
        update(RetryWorker)
        .where(RetryWorker.worker_id == worker_id)
        .values(started_at=now, heartbeat_at=now)
    )


def stop_worker(worker_id: str, stopped: datetime) -> Update:
    """Move a leaving worker's heartbeat to ``stopped`` (long past: no listing shows it)."""
    return (
        update(RetryWorker)
        .where(RetryWorker.worker_id == worker_id)
        .values(heartbeat_at=literal(stopped, UTCDateTime()))
    )


def touch_worker(at: datetime | None, worker_id: str) -> Update:
    """Move a worker's heartbeat to now."""
    return (
        update(RetryWorker)
        .where(RetryWorker.worker_id == worker_id)
        .values(heartbeat_at=now_expr(at))
    )


def live_workers(at: datetime | None, dead_after_seconds: float) -> AnySelect:
    """Workers heartbeating within ``dead_after_seconds``, with how many items they hold
    now (see :func:`worker_attempts` for their last hour)."""
    held = (
        select(func.count())
        .select_from(RetryItem)
        .where(RetryItem.locked_by == RetryWorker.worker_id, _status_is(RetryStatus.PROCESSING))
        .scalar_subquery()
    )
    return (
        select(RetryWorker, held.label("held"))
        .where(RetryWorker.heartbeat_at > after(at, -dead_after_seconds))
        .order_by(RetryWorker.host, RetryWorker.worker_id)
    )


def worker_attempts(at: datetime | None) -> AnySelect:
    """Per worker id: attempts and failed attempts in the last hour.

    One pass over the hour's history (the ``attempted_at`` index), not one per worker:
    history has no index by worker, and adding one would tax every attempt's INSERT.
    """
    attempts = func.sum(case((RetryHistory.status != "requeued", 1), else_=0))
    failures = func.sum(case((RetryHistory.status.in_(sorted(_FAILURE_STATUSES)), 1), else_=0))
    return (
        select(RetryHistory.worker_id, attempts.label("attempts"), failures.label("failures"))
        .where(RetryHistory.attempted_at > after(at, -3600.0), RetryHistory.worker_id.is_not(None))
        .group_by(RetryHistory.worker_id)
    )


_FAILURE_STATUSES = frozenset({"retry_scheduled", "dead_lettered", "failed", "lock_expired"})
