"""Insight queries: stats, alerts, stuck items, throughput, success rate, item lookups.

The reference schema had database views for these; here they are ORM queries returning
frozen dataclasses. Functions take the caller's Session and the operation's "now" (``at``;
None for the database clock) and never write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from retryqueue import encryption
from retryqueue import statements as sql
from retryqueue import validation as check
from retryqueue.errors import InvalidArgument, ItemNotFound, RetryQueueError, database_error
from retryqueue.fingerprint import FINGERPRINT_LENGTH
from retryqueue.models import RetryStatus
from retryqueue.results import (
    Alert,
    DeadLetterGroup,
    ErrorGroup,
    HistoryEntry,
    HourlyCount,
    ItemFilter,
    ItemSnapshot,
    QueueStats,
    SuccessRate,
)

__all__ = [
    "ENCRYPTED",
    "TRIAGE_STATUSES",
    "alerts",
    "cleanup_backlog",
    "dead_letter_groups",
    "error_groups",
    "fetch_all",
    "find_items",
    "get_item",
    "item_history",
    "item_payload",
    "items_per_hour",
    "readable_text",
    "resolve_fingerprint",
    "stats",
    "stuck",
    "success_rate_by_event_type",
    "table_sizes",
]

ENCRYPTED = "(encrypted: no key configured)"
"""What a sealed text reads as when no encryption key is configured."""

TRIAGE_STATUSES = (RetryStatus.DEAD_LETTER, RetryStatus.FAILED)
"""The statuses of items that need a person: dead letters, and failed (not retryable)."""


def fetch_all(session: Session, stmt: Any, operation: str) -> list[Any]:
    """All rows of ``stmt``; a database failure becomes :class:`DatabaseError` (``operation``)."""
    try:
        return list(session.execute(stmt).all())
    except SQLAlchemyError as exc:
        raise database_error(operation, exc) from exc


def snapshot(row: Any) -> ItemSnapshot:
    """An :class:`ItemSnapshot` from a row of ``statements.SNAPSHOT_COLUMNS``."""
    values = row._asdict()
    values["tags"] = tuple(values["tags"] or ())
    return ItemSnapshot(**values)


def get_item(session: Session, item_id: int) -> ItemSnapshot:
    """One item by id; :class:`ItemNotFound` if there is none."""
    rows = fetch_all(session, sql.select_item(item_id), "get")
    if not rows:
        raise ItemNotFound(item_id)
    return snapshot(rows[0])


def item_payload(session: Session, item_id: int) -> tuple[Any, Any]:
    """One item's (event_data, event_metadata); :class:`ItemNotFound` if there is none."""
    rows = fetch_all(session, sql.select_item_payload(item_id), "get")
    if not rows:
        raise ItemNotFound(item_id)
    return rows[0][0], rows[0][1]


def find_items(session: Session, item_filter: ItemFilter) -> list[ItemSnapshot]:
    """The items an :class:`ItemFilter` selects, oldest first."""
    return [snapshot(row) for row in fetch_all(session, sql.select_filtered(item_filter), "find")]


def item_history(session: Session, item_id: int) -> list[HistoryEntry]:
    """An item's history rows, oldest first."""
    try:
        entries = session.scalars(sql.history_for_item(item_id)).all()
    except SQLAlchemyError as exc:
        raise database_error("history", exc) from exc
    return [
        HistoryEntry(
            id=entry.id,
            retry_queue_id=entry.retry_queue_id,
            event_id=entry.event_id,
            attempt_number=entry.attempt_number,
            status=entry.status,
            error_message=entry.error_message,
            error_code=entry.error_code,
            worker_id=entry.worker_id,
            attempted_at=entry.attempted_at,
            duration_ms=entry.duration_ms,
            error_fingerprint=entry.error_fingerprint,
            exception_type=entry.exception_type,
            error_traceback=entry.error_traceback,
        )
        for entry in entries
    ]


def stats(session: Session) -> list[QueueStats]:
    """Counts, retry figures and ages per (status, event_type, plugin_name)."""
    return [
        QueueStats(
            status=row.status,
            event_type=row.event_type,
            plugin_name=row.plugin_name,
            count=int(row.count),
            avg_retry_count=float(row.avg_retry_count or 0.0),
            max_retry_count=int(row.max_retry_count or 0),
            oldest_created_at=row.oldest_created_at,
            newest_created_at=row.newest_created_at,
            locked_count=int(row.locked_count),
            deadline_count=int(row.deadline_count),
        )
        for row in fetch_all(session, sql.stats(), "stats")
    ]


def alerts(session: Session, at: datetime | None) -> list[Alert]:
    """Dead letters, stale locks, items near their retry limit, old pending items."""
    return [
        Alert(
            item_id=row.id,
            event_id=row.event_id,
            event_type=row.event_type,
            plugin_name=row.plugin_name,
            channel_name=row.channel_name,
            status=row.status,
            retry_count=row.retry_count,
            max_retries=row.max_retries,
            reason=row.reason,
            error_message=row.error_message,
            created_at=row.created_at,
            locked_by=row.locked_by,
            locked_at=row.locked_at,
        )
        for row in fetch_all(session, sql.alerts(at), "alerts")
    ]


def stuck(session: Session, at: datetime | None, older_than_seconds: float) -> list[ItemSnapshot]:
    """Items processing for longer than ``older_than_seconds``."""
    return [snapshot(row) for row in fetch_all(session, sql.stuck(at, older_than_seconds), "stuck")]


def items_per_hour(session: Session, at: datetime | None, hours: int) -> list[HourlyCount]:
    """Items created per UTC hour over the last ``hours`` hours (hours with none omitted)."""
    rows = fetch_all(session, sql.items_per_hour(at, hours), "items_per_hour")
    return [HourlyCount(hour=hour, count=int(count)) for hour, count in rows]


def success_rate_by_event_type(session: Session) -> list[SuccessRate]:
    """Per event type: total items, completed items and their ratio."""
    return [
        SuccessRate(
            event_type=event_type,
            total=int(total),
            completed=int(completed or 0),
            success_rate=(int(completed or 0) / int(total)) if total else 0.0,
        )
        for event_type, total, completed in fetch_all(
            session, sql.success_rate_by_event_type(), "success_rate_by_event_type"
        )
    ]


def dead_letter_groups(session: Session, group_by: str = "error_code") -> list[DeadLetterGroup]:
    """Dead letters per error_code, event_type, plugin or channel, largest group first."""
    if group_by not in sql.DEAD_LETTER_GROUPS:
        choices = ", ".join(sorted(sql.DEAD_LETTER_GROUPS))
        raise InvalidArgument(
            "group_by",
            f"unknown grouping {group_by!r}; expected {choices} (by fingerprint: error_groups)",
        )
    return [
        DeadLetterGroup(
            key=row.key,
            count=int(row.count),
            sample_error=row.sample_error,
            oldest_created_at=row.oldest,
            newest_created_at=row.newest,
        )
        for row in fetch_all(session, sql.dead_letter_groups(group_by), "dead_letter_groups")
    ]


def readable_text(value: str | None) -> str | None:
    """A stored text, decrypted when possible, else :data:`ENCRYPTED`."""
    try:
        opened = encryption.open_text(value)
    except RetryQueueError:
        return ENCRYPTED
    return ENCRYPTED if isinstance(opened, encryption.Undecryptable) else opened


def _statuses(statuses: Sequence[RetryStatus | str]) -> tuple[RetryStatus, ...]:
    if isinstance(statuses, str) or not statuses:
        raise InvalidArgument("statuses", "expected a non-empty sequence of statuses")
    return tuple(dict.fromkeys(check.status_list("statuses", statuses)))


def error_groups(
    session: Session,
    *,
    statuses: Sequence[RetryStatus | str] = TRIAGE_STATUSES,
    limit: int = 100,
) -> list[ErrorGroup]:
    """Items in ``statuses`` grouped by (error code, fingerprint), the largest ``limit``
    groups first, each with the plugins it touches and a sample message."""
    wanted = _statuses(statuses)
    limit = check.bounded_int("limit", limit, low=1, high=10_000)
    merged: dict[tuple[str | None, str | None], _Tally] = {}
    for row in fetch_all(session, sql.error_tally(wanted), "error groups"):
        key = (row.error_code, row.fingerprint)
        tally = merged.get(key)
        if tally is None:
            tally = merged[key] = _Tally(0, row.first_seen, row.last_seen, 0, set())
        tally.count += int(row.count)
        tally.first_seen = min(tally.first_seen, row.first_seen)
        tally.last_seen = max(tally.last_seen, row.last_seen)
        tally.newest_id = max(tally.newest_id, int(row.newest_id))
        tally.plugins.add(row.plugin_name or "-")
    largest = sorted(merged.items(), key=lambda kv: (-kv[1].count, kv[0][1] or "", kv[0][0] or ""))
    largest = largest[:limit]
    ids = [tally.newest_id for _, tally in largest]
    samples = dict(fetch_all(session, sql.error_samples(ids), "error groups")) if ids else {}
    return [
        ErrorGroup(
            error_code=code,
            fingerprint=mark,
            count=tally.count,
            first_seen=tally.first_seen,
            last_seen=tally.last_seen,
            sample_error=readable_text(samples.get(tally.newest_id)),
            plugins=tuple(sorted(tally.plugins)),
        )
        for (code, mark), tally in largest
    ]


@dataclass(slots=True)
class _Tally:
    """One error group being summed over its plugins' rows."""

    count: int
    first_seen: datetime
    last_seen: datetime
    newest_id: int
    plugins: set[str]


def resolve_fingerprint(
    session: Session, value: str, statuses: Sequence[RetryStatus | str] = TRIAGE_STATUSES
) -> str | None:
    """The full fingerprint ``value`` names among items in ``statuses``.

    ``value`` is a fingerprint or its first 4 or more hex digits (any case), or ``none``
    (items without a fingerprint: returned as is). A full fingerprint is returned as given,
    whether or not an item has it; a prefix that matches no item gives None;
    :class:`InvalidArgument` if it is malformed or matches more than one fingerprint.
    """
    if isinstance(value, str) and value.strip().lower() == "none":
        return "none"
    folded = check.fingerprint_value("fingerprint", value, prefix=True)
    if len(folded) == FINGERPRINT_LENGTH:
        return folded
    stmt = sql.fingerprints_starting(folded, _statuses(statuses), 6)
    found = [mark for (mark,) in fetch_all(session, stmt, "fingerprint")]
    if len(found) > 1:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise InvalidArgument(
            "fingerprint", f"{folded!r} is the start of several fingerprints ({shown}): give more"
        )
    return found[0] if found else None


@dataclass(frozen=True, slots=True)
class QueueGauges:
    """Point-in-time figures for a metrics exporter, all read on one clock.

    ``oldest_due_pending_age_seconds``: how long the longest-waiting claimable pending item
    has been due (0 when none is due): the queue's lag behind its workers.
    ``stale_locks``: processing items whose lock is older than the stale-lock threshold.
    """

    measured_at: datetime
    oldest_due_pending_age_seconds: float
    stale_locks: int


def queue_gauges(session: Session, at: datetime | None, stale_lock_seconds: float) -> QueueGauges:
    """The lag and stale-lock figures of :class:`QueueGauges` in one query."""
    row = fetch_all(session, sql.queue_gauges(at, stale_lock_seconds), "queue_gauges")[0]
    age = 0.0
    if row.oldest_due is not None:
        age = max(0.0, (row.now - row.oldest_due).total_seconds())
    return QueueGauges(
        measured_at=row.now, oldest_due_pending_age_seconds=age, stale_locks=int(row.stale_locks)
    )


def cleanup_backlog(session: Session, at: datetime | None, retention_days: float) -> int:
    """About how many rows ``cleanup(retention_days)`` would delete now (a progress total)."""
    rows = fetch_all(session, sql.cleanup_backlog(at, retention_days * 86400), "cleanup")
    return sum(int(count or 0) for count in rows[0])


def table_sizes(session: Session) -> tuple[int, int]:
    """Rows in the queue and in the history."""
    rows = fetch_all(session, sql.table_sizes(), "table sizes")
    return int(rows[0][0] or 0), int(rows[0][1] or 0)
