"""The rows of new items: :class:`NewItem` (what :meth:`RetryQueue.enqueue` is given) and
:func:`item_row`, which validates one and turns it into its INSERT parameters (retry
settings, schedule, expiry and deadline checked against each other). Private to
:mod:`retryqueue.queue` (the other rows it writes are in :mod:`retryqueue._rows`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from retryqueue import statements as sql
from retryqueue import validation as check
from retryqueue.errors import InvalidArgument
from retryqueue.models import RetryStatus

__all__ = ["NewItem", "item_row"]


@dataclass(frozen=True, slots=True)
class NewItem:
    """An item to enqueue (see :meth:`RetryQueue.enqueue` for the fields' meaning)."""

    event_type: str
    event_data: Any
    channel_name: str | None = None
    plugin_name: str | None = None
    event_metadata: Mapping[str, Any] | None = None
    max_retries: int = 3
    retry_delay_seconds: int = 60
    backoff_multiplier: float = 2.0
    priority: int = 5
    correlation_id: str | None = None
    tags: Sequence[str] | None = None
    event_id: uuid.UUID | str | None = None
    run_at: datetime | None = None
    delay: float | timedelta | None = None
    expires_at: datetime | None = None
    ttl: float | timedelta | None = None
    deadline: datetime | None = None
    retry_for: float | timedelta | None = None


def item_row(
    index: int,
    item: NewItem,
    at: datetime | None,
    *,
    max_payload_bytes: int,
    default_ttl: timedelta,
) -> dict[str, Any]:
    """The validated INSERT row of one :class:`NewItem` (``InvalidArgument`` if it is bad).

    ``at``: the Python clock's now, or None for the database clock (then the row carries
    the relative times that :func:`~retryqueue.statements.server_time_params` names).
    """
    if not isinstance(item, NewItem):
        raise InvalidArgument(f"items[{index}]", f"expected a NewItem, got {type(item).__name__}")
    run_at = None if item.run_at is None else check.aware("run_at", item.run_at)
    expires_at = None if item.expires_at is None else check.aware("expires_at", item.expires_at)
    if run_at is not None and item.delay is not None:
        raise InvalidArgument("delay", "give either run_at or delay, not both")
    if expires_at is not None and item.ttl is not None:
        raise InvalidArgument("ttl", "give either expires_at or ttl, not both")
    delay = 0.0 if item.delay is None else check.seconds("delay", item.delay)
    ttl = (
        default_ttl.total_seconds()
        if item.ttl is None
        else check.seconds("ttl", item.ttl, allow_zero=False)
    )
    _check_schedule(run_at, delay, expires_at, ttl, at)
    deadline, retry_for = _check_deadline(item, run_at, delay, expires_at, ttl, at)
    max_retries, retry_delay_seconds, backoff_multiplier, priority = _settings(item)
    row: dict[str, Any] = {
        "event_id": uuid.uuid4()
        if item.event_id is None
        else check.uuid_value("event_id", item.event_id),
        "event_type": check.text("event_type", item.event_type),
        "channel_name": check.optional_text("channel_name", item.channel_name),
        "plugin_name": check.optional_text("plugin_name", item.plugin_name),
        "event_data": check.not_reserved(
            "event_data",
            check.json_document("event_data", item.event_data, max_bytes=max_payload_bytes),
        ),
        "event_metadata": _metadata(item.event_metadata, max_payload_bytes),
        "retry_count": 0,
        "max_retries": max_retries,
        "retry_delay_seconds": retry_delay_seconds,
        "backoff_multiplier": backoff_multiplier,
        "status": RetryStatus.PENDING,
        "priority": priority,
        "correlation_id": check.optional_text("correlation_id", item.correlation_id),
        "tags": check.tag_list("tags", item.tags),
    }
    if at is None:
        row.update(sql.server_time_params(run_at, delay, expires_at, ttl))
        row.update(sql.server_deadline_params(deadline, retry_for))
    else:
        row["created_at"] = at
        row["next_retry_at"] = run_at if run_at is not None else at + timedelta(seconds=delay)
        row["expires_at"] = expires_at if expires_at is not None else at + timedelta(seconds=ttl)
        row["retry_deadline"] = (
            deadline
            if deadline is not None or retry_for is None
            else at + timedelta(seconds=retry_for)
        )
    return row


# Validated (max_retries, retry_delay_seconds, backoff_multiplier, priority), by the values
# as given and their types (2 and 2.0 and True hash alike): a bulk enqueue repeats a few
# combinations, and the multiplier's exact-decimal check is the costly one.
_SETTINGS: dict[tuple[Any, ...], tuple[int, int, float, int]] = {}
_SETTINGS_KEPT = 256


def _settings(item: NewItem) -> tuple[int, int, float, int]:
    """The item's validated retry settings and priority (``InvalidArgument`` if bad)."""
    given = (item.max_retries, item.retry_delay_seconds, item.backoff_multiplier, item.priority)
    key = (*given, *map(type, given))
    try:
        return _SETTINGS[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable value: validated (and refused) below
        key = ()
    settings = (
        check.bounded_int("max_retries", item.max_retries, low=0, high=1000),
        check.bounded_int("retry_delay_seconds", item.retry_delay_seconds, low=0),
        check.multiplier("backoff_multiplier", item.backoff_multiplier),
        check.bounded_int("priority", item.priority, low=1, high=10),
    )
    if key and len(_SETTINGS) < _SETTINGS_KEPT:
        _SETTINGS[key] = settings
    return settings


def _check_deadline(
    item: NewItem,
    run_at: datetime | None,
    delay: float,
    expires_at: datetime | None,
    ttl: float,
    at: datetime | None,
) -> tuple[datetime | None, float | None]:
    """The validated ``deadline`` (absolute) or ``retry_for`` (seconds from enqueue).

    Refused: both at once, a naive or past deadline, a non-positive or over-10-year
    ``retry_for``, and a deadline that is not after the first due time or not before the
    item expires (the last retry would be refused by the expiry instead).
    """
    if item.deadline is None and item.retry_for is None:
        return None, None
    if item.deadline is not None and item.retry_for is not None:
        raise InvalidArgument("retry_for", "give either deadline or retry_for, not both")
    now = at if at is not None else datetime.now(UTC)
    if item.deadline is not None:
        name, deadline, retry_for = "deadline", check.aware("deadline", item.deadline), None
        if deadline <= now:
            raise InvalidArgument("deadline", f"is in the past ({deadline.isoformat()})")
    else:
        name = "retry_for"
        retry_for = check.seconds("retry_for", item.retry_for, allow_zero=False)
        deadline = now + timedelta(seconds=retry_for)
    due = run_at if run_at is not None else now + timedelta(seconds=delay)
    expiry = expires_at if expires_at is not None else now + timedelta(seconds=ttl)
    if deadline <= due:
        raise InvalidArgument(
            name,
            f"the deadline {deadline.isoformat()} is not after the first due time "
            f"{due.isoformat()}: the item could never be retried",
        )
    if deadline >= expiry:
        raise InvalidArgument(
            name,
            f"the deadline {deadline.isoformat()} is not before the item expires "
            f"({expiry.isoformat()}); give a longer ttl or expires_at, or an earlier deadline",
        )
    return (deadline if retry_for is None else None), retry_for


def _check_schedule(
    run_at: datetime | None,
    delay: float,
    expires_at: datetime | None,
    ttl: float,
    at: datetime | None,
) -> None:
    """Refuse an item that would expire before (or when) it first becomes due.

    On the database clock (``at`` None) the host clock stands in for "now": the check is
    about schedules days apart, not about the seconds of skew between the two.
    """
    if run_at is None and expires_at is None:  # the common case: no clock needed
        if delay >= ttl:
            raise InvalidArgument(
                "delay",
                f"{delay:g}s is not shorter than the ttl of {ttl:g}s: the item would expire "
                "before it is due; give a longer ttl or expires_at",
            )
        return
    now = at if at is not None else datetime.now(UTC)
    due = run_at if run_at is not None else now + timedelta(seconds=delay)
    if expires_at is not None:
        if run_at is not None and expires_at <= run_at:
            raise InvalidArgument("expires_at", "must be later than run_at")
        if expires_at <= now:
            raise InvalidArgument("expires_at", f"is in the past ({expires_at.isoformat()})")
        if expires_at <= due:
            raise InvalidArgument(
                "expires_at",
                f"{expires_at.isoformat()} is not after the first due time (delay {delay:g}s): "
                "the item could never run",
            )
    elif run_at is not None and run_at >= now + timedelta(seconds=ttl):
        raise InvalidArgument(
            "run_at",
            f"{run_at.isoformat()} is not before the item expires (ttl {ttl:g}s after "
            "now): the item could never run; give a longer ttl or expires_at",
        )


def _metadata(value: Mapping[str, Any] | None, max_payload_bytes: int) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, Mapping):
        raise InvalidArgument("event_metadata", "expected a mapping (JSON object)")
    check.json_document("event_metadata", value, nullable=True, max_bytes=max_payload_bytes)
    return None if value is None else dict(value)
