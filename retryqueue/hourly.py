"""Attempts per UTC hour for the dashboard's charts: closed hours rolled up once, the
current hour counted live.

Counting a day of history on every page view reads every attempt of that day (half a
million rows at 20,000 attempts an hour). Instead, :func:`roll_up` counts each *closed*
hour once, per plugin and outcome, into ``daz_retry_hourly`` (a few rows per hour), and
:func:`outcomes_per_hour` reads those rows and counts only the hours not rolled up yet
(the current one, normally) from history. The worker does nothing for this.

Rolling up a closed hour reads that hour's history (about 70 ms for 20,000 attempts on
PostgreSQL), so a page must not roll up a whole day at once: :func:`roll_up` takes a
``limit`` (the newest missing hours first), and :func:`chart_outcomes` never counts a
closed hour live, it reports the hours not rolled up yet as ``not_counted`` instead. The
dashboard server rolls the rest up in the background (``retryqueue.web.keep_rolled_up``).

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
from retryqueue.errors import InvalidArgument, database_error
from retryqueue.models import HOURLY_MARKER
from retryqueue.monitoring import fetch_all
from retryqueue.statements import hourly as sql

__all__ = [
    "FAILURE_OUTCOMES",
    "GRACE",
    "HourlyOutcomes",
    "OutcomeCount",
    "chart_outcomes",
    "missing_hours",
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


@dataclass(frozen=True, slots=True)
class HourlyOutcomes:
    """What a chart shows: the counted hours, and the closed hours not counted yet."""

    rows: list[OutcomeCount]
    """Counts per hour (and plugin), oldest first, hours with none omitted."""
    not_counted: tuple[datetime, ...]
    """Closed hours of the window neither rolled up yet nor counted live, oldest first."""


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


def missing_hours(session: Session, at: datetime | None, hours: int) -> list[datetime]:
    """The closed hours of the last ``hours`` not rolled up yet, newest first."""
    first, closed_end, _ = _window(_now(session, at), hours)
    done = _rolled_up(session, first, closed_end)
    return [hour for hour in reversed(_hours(first, closed_end)) if hour not in done]


def roll_up(session: Session, at: datetime | None, hours: int, *, limit: int | None = None) -> int:
    """Count the closed hours of the last ``hours`` not rolled up yet into
    ``daz_retry_hourly`` (at most ``limit`` of them, the newest first); returns how many
    hours it rolled up.

    Two readers rolling up the same hour at once: the second one's INSERT fails on the
    primary key (:class:`~retryqueue.errors.DatabaseError`); its caller rolls back and
    reads what the first one wrote.
    """
    if limit is not None and limit < 0:
        raise InvalidArgument("limit", "must be 0 or more")
    missing = missing_hours(session, at, hours)[:limit]
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
    closed hours nobody rolled up yet, see :func:`roll_up`) are counted in history: up to
    a day of history when nothing was rolled up. Per plugin, ``plugin_name`` is None for
    attempts of items without a plugin or gone from the queue. A page that must stay fast
    uses :func:`chart_outcomes` instead.
    """
    return _outcomes(session, at, hours, per_plugin=per_plugin, closed_live=True).rows


def chart_outcomes(
    session: Session, at: datetime | None, hours: int, *, per_plugin: bool = False
) -> HourlyOutcomes:
    """Like :func:`outcomes_per_hour`, but its cost is bounded: only the hours not closed
    yet (the current one, and the previous one during :data:`GRACE`) are counted in
    history; closed hours not rolled up yet are not counted, and listed in
    ``not_counted``."""
    return _outcomes(session, at, hours, per_plugin=per_plugin, closed_live=False)


def _outcomes(
    session: Session, at: datetime | None, hours: int, *, per_plugin: bool, closed_live: bool
) -> HourlyOutcomes:
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
    not_counted: list[datetime] = []
    for hour in _hours(first, current + _HOUR):
        if hour in done:
            continue
        if hour < closed_end and not closed_live:
            not_counted.append(hour)
            continue
        stmt = sql.hour_outcomes(hour, hour + _HOUR, plugin=per_plugin)
        for plugin, outcome, count in fetch_all(session, stmt, "outcomes per hour"):
            add(hour, plugin, outcome, int(count))
    rows = [
        OutcomeCount(hour, completed, failed, plugin)
        for (hour, plugin), (completed, failed) in sorted(
            tally.items(), key=lambda entry: (entry[0][0], entry[0][1] or "")
        )
        if completed or failed
    ]
    return HourlyOutcomes(rows, tuple(not_counted))


def totals(per_plugin: list[OutcomeCount]) -> list[OutcomeCount]:
    """Per-plugin counts summed per hour (plugin None), oldest first."""
    summed: dict[datetime, list[int]] = {}
    for row in per_plugin:
        counts = summed.setdefault(row.hour, [0, 0])
        counts[0] += row.completed
        counts[1] += row.failed
    return [OutcomeCount(hour, done, failed) for hour, (done, failed) in sorted(summed.items())]
