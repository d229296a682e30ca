"""Attempts per UTC hour (:mod:`retryqueue.hourly`): counted live in history, and rolled up
into ``daz_retry_hourly`` (one row per hour, plugin and outcome, and a marker row per
rolled-up hour).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, Insert, Select, and_, func, insert, literal, select

from retryqueue.models import HOURLY_MARKER, RetryHistory, RetryHourlyOutcome, RetryItem
from retryqueue.statements._base import AnySelect
from retryqueue.types import UTCDateTime

__all__ = ["hour_outcomes", "hourly_rows", "insert_hourly", "rolled_up_hours"]


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
