"""The dashboard's insight and audit functions, over the statement shelves
:mod:`~retryqueue.statements.browse` and :mod:`~retryqueue.statements.audit` (the live
workers are listed by :mod:`retryqueue.registry`).

Like :mod:`retryqueue.monitoring`, every function takes the caller's Session and never
commits. Reads are bounded: counts stop at a cap, lists are keyset pages. Encrypted texts
are opened when a key is configured and shown as :data:`ENCRYPTED` otherwise, so one
sealed value never breaks a page.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from retryqueue import encryption, monitoring
from retryqueue.errors import ItemNotFound, RetryQueueError, database_error
from retryqueue.hourly import (
    FAILURE_OUTCOMES,
    HourlyOutcomes,
    OutcomeCount,
    chart_outcomes,
    missing_hours,
    outcomes_per_hour,
    roll_up,
)
from retryqueue.models import RetryDashboardAudit, RetryStatus
from retryqueue.monitoring import ENCRYPTED, fetch_all, queue_gauges, readable_text
from retryqueue.results import ErrorGroup, ItemQuery
from retryqueue.statements import audit as audit_sql
from retryqueue.statements import browse as sql

__all__ = [
    "ENCRYPTED",
    "FAILURE_OUTCOMES",
    "AuditEntry",
    "ErrorGroup",
    "EventTypeSuccess",
    "HourlyOutcomes",
    "ItemDetail",
    "ItemPage",
    "ItemRow",
    "OutcomeCount",
    "Overview",
    "TimelineEntry",
    "action_ids",
    "audit_log",
    "chart_outcomes",
    "count_matching",
    "error_groups",
    "finish_action",
    "item_detail",
    "item_page",
    "missing_hours",
    "outcomes_per_hour",
    "overview",
    "record_action",
    "roll_up",
]


def _run(session: Session, stmt: Any, operation: str) -> Any:
    try:
        return session.execute(stmt)
    except SQLAlchemyError as exc:
        raise database_error(operation, exc) from exc


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


# -- items -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ItemRow:
    """One line of the item list."""

    id: int
    event_type: str
    plugin_name: str | None
    channel_name: str | None
    status: RetryStatus
    priority: int
    retry_count: int
    max_retries: int
    last_error_code: str | None
    error_fingerprint: str | None
    error_message: str | None
    created_at: datetime
    next_retry_at: datetime
    last_attempted_at: datetime | None
    correlation_id: str | None


@dataclass(frozen=True, slots=True)
class ItemPage:
    """A page of items, the cursor of the next page (None on the last page) and of the
    previous one (None on the first)."""

    rows: list[ItemRow]
    next_after: tuple[Any, int] | None
    previous_before: tuple[Any, int] | None = None


def item_page(session: Session, query: ItemQuery) -> ItemPage:
    """One keyset page of the items an :class:`ItemQuery` selects (backwards from
    ``before``: the rows come back in the query's order all the same)."""
    rows = fetch_all(session, sql.item_page(query, _dialect(session)), "items")
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    if query.before is not None:
        rows.reverse()
    items = [
        ItemRow(**{**row._asdict(), "error_message": readable_text(row.error_message)})
        for row in rows
    ]
    if not items:
        return ItemPage(items, None, None)
    first, last = items[0], items[-1]
    backwards = query.before is not None
    # Forwards, a page after a cursor has rows before it; backwards, one has rows after it.
    has_next = query.before is not None or more
    has_previous = more if backwards else query.after is not None
    return ItemPage(
        items,
        (getattr(last, query.sort), last.id) if has_next else None,
        (getattr(first, query.sort), first.id) if has_previous else None,
    )


def count_matching(session: Session, query: ItemQuery, cap: int) -> int:
    """How many items match ``query``; at most ``cap + 1`` (more than ``cap``)."""
    stmt = sql.capped_count(sql.query_clauses(query, _dialect(session)), cap)
    return int(fetch_all(session, stmt, "count")[0][0])


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One attempt (or replay) of an item, from the history table."""

    attempt_number: int
    status: str
    worker_id: str | None
    attempted_at: datetime
    duration_ms: int | None
    error_code: str | None
    error_message: str | None
    exception_type: str | None
    error_traceback: str | None


@dataclass(frozen=True, slots=True)
class ItemDetail:
    """Every column of an item, its payload as text, and its attempt timeline."""

    columns: Mapping[str, Any]
    event_data: str
    encrypted: bool
    timeline: list[TimelineEntry] = field(default_factory=list)


def item_detail(session: Session, item_id: int) -> ItemDetail:
    """One item in full; :class:`ItemNotFound` if there is none."""
    rows = fetch_all(session, sql.item_row(item_id), "item")
    if not rows:
        raise ItemNotFound(item_id)
    columns = dict(rows[0]._asdict())
    raw = columns.pop("event_data")
    try:
        opened = encryption.open_json(raw)
    except RetryQueueError:
        opened = encryption.Undecryptable(raw, "no key opens it")
    if isinstance(opened, encryption.Undecryptable):  # no key configured, or not this key
        payload, encrypted = ENCRYPTED, True
    else:
        payload = json.dumps(opened, indent=2, sort_keys=True, default=str)
        encrypted = False
    columns["error_message"] = readable_text(columns["error_message"])
    timeline = [
        TimelineEntry(
            attempt_number=row.attempt_number,
            status=row.status,
            worker_id=row.worker_id,
            attempted_at=row.attempted_at,
            duration_ms=row.duration_ms,
            error_code=row.error_code,
            error_message=readable_text(row.error_message),
            exception_type=row.exception_type,
            error_traceback=readable_text(row.error_traceback),
        )
        for row in fetch_all(session, sql.history_rows(item_id), "history")
    ]
    return ItemDetail(columns, payload, encrypted, timeline)


# -- overview --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventTypeSuccess:
    """Of one event type's recent items: how many, how many completed, how many gave up."""

    event_type: str
    total: int
    completed: int
    given_up: int

    @property
    def success_rate(self) -> float:
        """Completed items over all items (0 when there are none)."""
        return self.completed / self.total if self.total else 0.0


@dataclass(frozen=True, slots=True)
class Overview:
    """The overview page's figures, read on one clock.

    Counts stop at the cap (``cap + 1`` means "more than cap"). ``not_counted``: the
    chart's closed hours not rolled up yet (see :func:`chart_outcomes`).
    """

    now: datetime
    cap: int
    counts: Mapping[str, int]
    due_now: int
    scheduled: int
    oldest_due_age_seconds: float
    stale_locks: int
    hourly: list[OutcomeCount]
    success: list[EventTypeSuccess]
    not_counted: tuple[datetime, ...] = ()


def overview(
    session: Session, at: datetime | None, *, cap: int, hours: int, stale_lock_seconds: float
) -> Overview:
    """Counts by status, backlog, lag, stale locks, outcomes per hour (last ``hours``,
    closed hours not rolled up yet left uncounted), and success by event type of the
    newest ``cap`` items."""
    row = fetch_all(session, sql.status_counts(at, cap), "overview")[0]
    gauges = queue_gauges(session, at, stale_lock_seconds)
    success = [
        EventTypeSuccess(event_type, int(total), int(done or 0), int(dead or 0))
        for event_type, total, done, dead in fetch_all(
            session, sql.success_by_event_type(cap), "success rate"
        )
    ]
    chart = chart_outcomes(session, at, hours)
    return Overview(
        now=row.now,
        cap=cap,
        counts={status.value: int(getattr(row, status.value)) for status in RetryStatus},
        due_now=int(row.due_now),
        scheduled=int(row.scheduled),
        oldest_due_age_seconds=gauges.oldest_due_pending_age_seconds,
        stale_locks=gauges.stale_locks,
        hourly=chart.rows,
        success=success,
        not_counted=chart.not_counted,
    )


# -- dead letters ----------------------------------------------------------------------


def error_groups(session: Session, limit: int = 200) -> list[ErrorGroup]:
    """The dashboard's dead-letter groups: :func:`retryqueue.monitoring.error_groups` of
    the ``dead_letter`` items (its page lists dead letters; failed items are in triage
    through the CLI, the API and the metrics)."""
    return monitoring.error_groups(session, statuses=(RetryStatus.DEAD_LETTER,), limit=limit)


# -- actions and their audit trail ------------------------------------------------------


def action_ids(session: Session, query: ItemQuery, action: str, cap: int) -> list[int]:
    """The ids (oldest first, at most ``cap``) a ``replay`` or ``purge`` of ``query`` takes."""
    stmt = sql.actionable_ids(query, _dialect(session), action, cap)
    return [int(item_id) for (item_id,) in fetch_all(session, stmt, action)]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One dashboard action: who, when, what (selection), how many asked and done."""

    id: int
    actor: str
    action: str
    selection: Mapping[str, Any] | None
    requested: int
    affected: int | None
    detail: str | None
    occurred_at: datetime
    finished_at: datetime | None


def record_action(
    session: Session,
    at: datetime | None,
    *,
    actor: str,
    action: str,
    selection: Mapping[str, Any] | None,
    requested: int,
) -> int:
    """Write the audit record of an action about to run; returns its id."""
    values = {
        "actor": actor[:255],
        "action": action[:50],
        "selection": dict(selection) if selection is not None else None,
        "requested": requested,
    }
    try:
        if session.get_bind().dialect.insert_returning:
            stmt = audit_sql.insert_audit(at).values(**values).returning(RetryDashboardAudit.id)
            return int(session.execute(stmt).scalar_one())
        result = session.execute(audit_sql.insert_audit(at).values(**values))
        return int(result.inserted_primary_key[0])  # type: ignore[attr-defined]
    except SQLAlchemyError as exc:
        raise database_error("audit", exc) from exc


def finish_action(
    session: Session,
    at: datetime | None,
    audit_id: int,
    affected: int,
    *,
    finished: bool,
    detail: str | None = None,
) -> None:
    """Record the progress (``finished=False``) or the end of an audited action."""
    stmt = audit_sql.finish_audit(at, audit_id, affected, finished=finished, detail=detail)
    _run(session, stmt, "audit")


def audit_log(session: Session, limit: int = 50, before_id: int | None = None) -> list[AuditEntry]:
    """The newest audit records (older than ``before_id``), newest first."""
    try:
        entries = session.scalars(audit_sql.audit_entries(limit, before_id)).all()
    except SQLAlchemyError as exc:
        raise database_error("audit", exc) from exc
    return [
        AuditEntry(
            id=entry.id,
            actor=entry.actor,
            action=entry.action,
            selection=entry.selection,
            requested=entry.requested,
            affected=entry.affected,
            detail=entry.detail,
            occurred_at=entry.occurred_at,
            finished_at=entry.finished_at,
        )
        for entry in entries
    ]
