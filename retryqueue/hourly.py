"""Attempts per UTC hour for the dashboard's charts: closed hours rolled up once, the
current hour counted live.

Counting a day of history on every page view reads every attempt of that day (half a
million rows at 20,000 attempts an hour). Instead, :func:`roll_up` counts each *closed*
hour once, per plugin and outcome, into ``daz_retry_hourly`` (a few rows per hour), and
:func:`outcomes_per_hour` reads those rows and counts only the hours not rolled up yet
(the current one, normally) from history. The worker does nothing for this: the reader
that first needs an hour pays for it, once.

An hour counts as closed :data:`GRACE` after its end, so that an attempt written late (a
transaction that began before the hour ended and committed after it) still lands in its
hour. An attempt recorded in an hour after that hour was rolled up is not counted.

Every function takes the caller's Session and never commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from retryqueue import statements
from retryqueue.errors import database_error
from retryqueue.models import HOURLY_MARKER
from retryqueue.monitoring import fetch_all
from retryqueue.statements import browse as sql

__all__ = [
    "FAILURE_OUTCOMES",
    "GRACE",
    "OutcomeCount",
    "outcomes_per_hour",
    "roll_up",
    "totals",
]

GRACE = timedelta(minutes=5)
"""How long after its end an hour is still counted live (then rolled up for good)."""

FAILURE_OUTCOMES = frozenset({"retry_scheduled", "dead_lettered", "failed", "lock_expired"})
"""History statuses that count as a failed attempt (``completed`` counts as a completion)."""

_HOUR = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class OutcomeCount:
    """Completions and failures in one UTC hour (optionally of one plugin)."""

    hour: datetime
    completed: int
    failed: int
    plugin_name: str | None = None


def _now(session: Session, at: datetime | None) -> datetime:
    if at is not None:
        return at.astimezone(UTC)
    now: datetime = fetch_all(session, statements.database_now(None), "clock")[0][0]
    return now.astimezone(UTC)


def _window(now: datetime, hours: int) -> tuple[datetime, datetime, datetime]:
    """(first hour shown, end of the closed hours, current hour) for the last ``hours``."""
    current = now.replace(minute=0, second=0, microsecond=0)
    first = current - (hours - 1) * _HOUR
    closed_end = (now - GRACE).replace(minute=0, second=0, microsecond=0)
    return first, max(first, closed_end), current


def _hours(start: datetime, end: datetime) -> list[datetime]:
    count = int((end - start) / _HOUR)
    return [start + n * _HOUR for n in range(max(0, count))]


def _aware(value: Any) -> datetime:
    hour = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return hour.replace(tzinfo=UTC) if hour.tzinfo is None else hour.astimezone(UTC)


def _rolled_up(session: Session, start: datetime, end: datetime) -> set[datetime]:
    rows = fetch_all(session, sql.rolled_up_hours(start, end), "hourly outcomes")
    return {_aware(hour) for (hour,) in rows}


def roll_up(session: Session, at: datetime | None, hours: int) -> int:
    """Count the closed hours of the last ``hours`` not rolled up yet into
    ``daz_retry_hourly``; returns how many hours it rolled up.

    Two readers rolling up the same hour at once: the second one's INSERT fails on the
    primary key (:class:`~retryqueue.errors.DatabaseError`); its caller rolls back and
    reads what the first one wrote.
    """
    first, closed_end, _ = _window(_now(session, at), hours)
    done = _rolled_up(session, first, closed_end)
    missing = [hour for hour in _hours(first, closed_end) if hour not in done]
    for hour in missing:
        rows = fetch_all(
            session, sql.hour_outcomes(hour, hour + _HOUR, plugin=True), "hourly outcomes"
        )
        values = [
            {"hour": hour, "plugin_name": plugin, "outcome": outcome, "attempts": int(count)}
            for plugin, outcome, count in rows
        ]
        total = sum(value["attempts"] for value in values)
        values.append(
            {"hour": hour, "plugin_name": "", "outcome": HOURLY_MARKER, "attempts": total}
        )
        try:
            session.execute(sql.insert_hourly(), values)
        except SQLAlchemyError as exc:
            raise database_error("hourly outcomes", exc) from exc
    return len(missing)


def outcomes_per_hour(
    session: Session, at: datetime | None, hours: int, *, per_plugin: bool = False
) -> list[OutcomeCount]:
    """Completed and failed attempts per UTC hour (and plugin) over the last ``hours``
    hours, oldest first, hours with none omitted.

    Rolled-up hours are read from ``daz_retry_hourly``; the others (the current hour, and
    closed hours nobody rolled up yet, see :func:`roll_up`) are counted in history. Per
    plugin, ``plugin_name`` is None for attempts of items without a plugin or gone from
    the queue.
    """
    first, closed_end, current = _window(_now(session, at), hours)
    tally: dict[tuple[datetime, str | None], list[int]] = {}

    def add(hour: datetime, plugin: str, outcome: str, count: int) -> None:
        counts = tally.setdefault((hour, plugin or None), [0, 0])
        if outcome == "completed":
            counts[0] += count
        elif outcome in FAILURE_OUTCOMES:
            counts[1] += count

    stmt = sql.hourly_rows(first, closed_end, plugin=per_plugin)
    stored = [(_aware(hour), *rest) for hour, *rest in fetch_all(session, stmt, "hourly")]
    # Only an hour with its marker is rolled up (rows and marker are written together).
    done = {hour for hour, _, outcome, _ in stored if outcome == HOURLY_MARKER}
    for hour, plugin, outcome, count in stored:
        if hour in done and outcome != HOURLY_MARKER:
            add(hour, plugin, outcome, int(count))
    for hour in _hours(first, current + _HOUR):
        if hour in done:
            continue
        stmt = sql.hour_outcomes(hour, hour + _HOUR, plugin=per_plugin)
        for plugin, outcome, count in fetch_all(session, stmt, "outcomes per hour"):
            add(hour, plugin, outcome, int(count))
    return [
        OutcomeCount(hour, completed, failed, plugin)
        for (hour, plugin), (completed, failed) in sorted(
            tally.items(), key=lambda entry: (entry[0][0], entry[0][1] or "")
        )
        if completed or failed
    ]


def totals(per_plugin: list[OutcomeCount]) -> list[OutcomeCount]:
    """Per-plugin counts summed per hour (plugin None), oldest first."""
    summed: dict[datetime, list[int]] = {}
    for row in per_plugin:
        counts = summed.setdefault(row.hour, [0, 0])
        counts[0] += row.completed
        counts[1] += row.failed
    return [OutcomeCount(hour, done, failed) for hour, (done, failed) in sorted(summed.items())]
