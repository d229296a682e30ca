"""Reading and monitoring: item snapshots, history, stats, alerts, throughput, gauges."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import (
    Select,
    and_,
    case,
    func,
    or_,
    select,
)

from retryqueue.models import (
    TERMINAL_STATUSES,
    RetryCircuit,
    RetryHistory,
    RetryItem,
    RetryStatus,
)
from retryqueue.results import ItemFilter
from retryqueue.statements._base import (
    AnySelect,
    _hour_bucket,
    _status_in,
    _status_is,
    after,
    now_expr,
)
from retryqueue.statements.admin import _filter_clauses
from retryqueue.statements.claims import _circuit_filter, circuit_key_of_item
from retryqueue.statements.limits import KeyFilter, skipped_keys

SNAPSHOT_COLUMNS = (
    RetryItem.id,
    RetryItem.event_id,
    RetryItem.event_type,
    RetryItem.channel_name,
    RetryItem.plugin_name,
    RetryItem.status,
    RetryItem.priority,
    RetryItem.retry_count,
    RetryItem.max_retries,
    RetryItem.error_message,
    RetryItem.last_error_code,
    RetryItem.created_at,
    RetryItem.next_retry_at,
    RetryItem.last_attempted_at,
    RetryItem.completed_at,
    RetryItem.expires_at,
    RetryItem.locked_by,
    RetryItem.locked_at,
    RetryItem.correlation_id,
    RetryItem.tags,
    RetryItem.retry_deadline,
    RetryItem.error_fingerprint,
)


def select_item(item_id: int) -> AnySelect:
    """One item's snapshot columns."""
    return select(*SNAPSHOT_COLUMNS).where(RetryItem.id == item_id)


def select_item_payload(item_id: int) -> AnySelect:
    """One item's event_data and event_metadata (decrypted by the column type)."""
    return select(RetryItem.event_data, RetryItem.event_metadata).where(RetryItem.id == item_id)


def select_filtered(item_filter: ItemFilter) -> AnySelect:
    """Snapshot columns of the items a filter selects, oldest first."""
    stmt = select(*SNAPSHOT_COLUMNS).where(*_filter_clauses(item_filter)).order_by(RetryItem.id)
    if item_filter.limit is not None:
        stmt = stmt.limit(item_filter.limit)
    return stmt


def history_for_item(item_id: int) -> Select[RetryHistory]:
    """An item's history rows in attempt order."""
    return (
        select(RetryHistory)
        .where(RetryHistory.retry_queue_id == item_id)
        .order_by(RetryHistory.attempted_at, RetryHistory.id)
    )


def stats() -> AnySelect:
    """Counts per (status, event_type, plugin_name)."""
    return (
        select(
            RetryItem.status,
            RetryItem.event_type,
            RetryItem.plugin_name,
            func.count().label("count"),
            func.avg(RetryItem.retry_count).label("avg_retry_count"),
            func.max(RetryItem.retry_count).label("max_retry_count"),
            func.min(RetryItem.created_at).label("oldest_created_at"),
            func.max(RetryItem.created_at).label("newest_created_at"),
            func.count(RetryItem.locked_by).label("locked_count"),
            func.count(RetryItem.retry_deadline).label("deadline_count"),
        )
        .group_by(RetryItem.status, RetryItem.event_type, RetryItem.plugin_name)
        .order_by(RetryItem.status, RetryItem.event_type, RetryItem.plugin_name)
    )


ALERT_DEAD_LETTER = "dead letter: manual intervention required"
ALERT_FAILED = "failed: not retryable (e.g. no handler, permanent error), needs a fix"
ALERT_STALE_LOCK = "stale lock"
ALERT_APPROACHING_LIMIT = "approaching retry limit"
ALERT_OLD_PENDING = "old pending item"


def alerts(
    at: datetime | None,
    *,
    stale_lock_seconds: float = 3600,
    old_pending_seconds: float = 86400,
) -> AnySelect:
    """Items needing attention, each with its most urgent reason."""
    active = _status_in(RetryStatus.PENDING, RetryStatus.PROCESSING)
    reason = case(
        (_status_is(RetryStatus.DEAD_LETTER), ALERT_DEAD_LETTER),
        (_status_is(RetryStatus.FAILED), ALERT_FAILED),
        (
            and_(
                _status_is(RetryStatus.PROCESSING),
                RetryItem.locked_at < after(at, -stale_lock_seconds),
            ),
            ALERT_STALE_LOCK,
        ),
        # retry_count above 80 % of max_retries, in integers.
        (
            and_(active, RetryItem.retry_count * 10 > RetryItem.max_retries * 8),
            ALERT_APPROACHING_LIMIT,
        ),
        (
            and_(
                _status_is(RetryStatus.PENDING),
                RetryItem.created_at < after(at, -old_pending_seconds),
            ),
            ALERT_OLD_PENDING,
        ),
        else_=None,
    ).label("reason")
    inner = select(
        RetryItem.id,
        RetryItem.event_id,
        RetryItem.event_type,
        RetryItem.plugin_name,
        RetryItem.channel_name,
        RetryItem.status,
        RetryItem.retry_count,
        RetryItem.max_retries,
        reason,
        RetryItem.error_message,
        RetryItem.created_at,
        RetryItem.locked_by,
        RetryItem.locked_at,
    ).subquery("flagged")
    return select(inner).where(inner.c.reason.is_not(None)).order_by(inner.c.id)


def stuck(at: datetime | None, older_than_seconds: float) -> AnySelect:
    """Processing items whose lock is older than the given age."""
    return (
        select(*SNAPSHOT_COLUMNS)
        .where(
            _status_is(RetryStatus.PROCESSING),
            RetryItem.locked_at < after(at, -older_than_seconds),
        )
        .order_by(RetryItem.locked_at, RetryItem.id)
    )


def items_per_hour(at: datetime | None, hours: int) -> AnySelect:
    """Items created per UTC hour over the last ``hours`` hours."""
    bucket = _hour_bucket(RetryItem.created_at).label("hour")
    return (
        select(bucket, func.count())
        .where(RetryItem.created_at > after(at, -hours * 3600.0))
        .group_by(bucket)
        .order_by(bucket)
    )


DEAD_LETTER_GROUPS = {
    "error_code": RetryItem.last_error_code,
    "event_type": RetryItem.event_type,
    "plugin": RetryItem.plugin_name,
    "plugin_name": RetryItem.plugin_name,
    "channel": RetryItem.channel_name,
    "channel_name": RetryItem.channel_name,
}


def dead_letter_groups(group_by: str) -> AnySelect:
    """Dead letters and failed items counted per group, with a sample error message and
    the age range (group by error_code to tell NO_HANDLER, EXPIRED, DEADLINE_REACHED...)."""
    key = DEAD_LETTER_GROUPS[group_by]
    return (
        select(
            key.label("key"),
            func.count().label("count"),
            func.max(RetryItem.error_message).label("sample_error"),
            func.min(RetryItem.created_at).label("oldest"),
            func.max(RetryItem.created_at).label("newest"),
        )
        .where(_status_in(RetryStatus.DEAD_LETTER, RetryStatus.FAILED))
        .group_by(key)
        .order_by(func.count().desc(), key)
    )


def success_rate_by_event_type() -> AnySelect:
    """Per event type: the finished items (completed, failed, dead letter) and the completed.

    Pending and processing items have no outcome yet and are not counted; an event type
    with no finished item has no row.
    """
    completed = func.sum(case((_status_is(RetryStatus.COMPLETED), 1), else_=0))
    return (
        select(RetryItem.event_type, func.count(), completed)
        .where(_status_in(*TERMINAL_STATUSES))
        .group_by(RetryItem.event_type)
        .order_by(RetryItem.event_type)
    )


def queue_gauges(at: datetime | None, stale_lock_seconds: float) -> AnySelect:
    """Now, the due time of the oldest due (claimable) pending item, and the stale-lock count.

    Items held back by a circuit that is not closed (opened by the breaker or by hand,
    keyed by plugin or by plugin and event type) are not waiting for a worker: they are
    left out of the oldest due time. One round trip for the metrics exporter; all three
    figures are read on the same clock.
    """
    now = now_expr(at)
    held_keys = select(RetryCircuit.circuit_key).where(RetryCircuit.state != "closed")
    oldest_due = (
        select(func.min(RetryItem.next_retry_at))
        .where(
            _status_is(RetryStatus.PENDING),
            RetryItem.next_retry_at <= now,
            RetryItem.expires_at > now,
            or_(
                RetryItem.plugin_name.is_(None),
                and_(
                    circuit_key_of_item(False).not_in(held_keys),
                    circuit_key_of_item(True).not_in(held_keys),
                ),
            ),
        )
        .scalar_subquery()
    )
    stale_locks = (
        select(func.count())
        .select_from(RetryItem)
        .where(
            _status_is(RetryStatus.PROCESSING),
            or_(
                RetryItem.locked_at < after(at, -stale_lock_seconds),
                RetryItem.locked_at.is_(None),
            ),
        )
        .scalar_subquery()
    )
    return select(
        now.label("now"),
        oldest_due.label("oldest_due"),
        stale_locks.label("stale_locks"),
    )


def next_claimable_due(
    at: datetime | None,
    skip_keys: Sequence[str] = (),
    *,
    per_event_type: bool = False,
    limit_filter: KeyFilter | None = None,
) -> AnySelect:
    """The earliest next_retry_at among items :func:`claim` could take, and now.

    Unlike :func:`next_due`, skips expired and locked pending items (never claimed), so
    an idle worker does not keep waking for them; and, like the claim, the items of the
    circuits in ``skip_keys`` and those ``limit_filter`` skips (paused keys).
    """
    now = now_expr(at)
    return select(func.min(RetryItem.next_retry_at).label("next_due"), now.label("now")).where(
        _status_is(RetryStatus.PENDING),
        RetryItem.locked_by.is_(None),
        RetryItem.expires_at > now,
        *_circuit_filter(per_event_type, skip=list(skip_keys) or None),
        *skipped_keys(limit_filter),
    )


def next_claimable_due_by_key(
    at: datetime | None,
    keys: Sequence[str],
    *,
    per_event_type: bool = False,
    limit_filter: KeyFilter | None = None,
) -> AnySelect:
    """Per circuit key in ``keys``: the earliest next_retry_at of its claimable items, and
    now (keys without such items are absent; so are the items ``limit_filter`` skips:
    a paused key's items wait for the pause, not for their circuit's probe)."""
    now = now_expr(at)
    key = circuit_key_of_item(per_event_type)
    return (
        select(
            key.label("circuit_key"),
            func.min(RetryItem.next_retry_at).label("next_due"),
            now.label("now"),
        )
        .where(
            _status_is(RetryStatus.PENDING),
            RetryItem.locked_by.is_(None),
            RetryItem.expires_at > now,
            key.in_(list(keys)),
            *skipped_keys(limit_filter),
        )
        .group_by(key)
    )
