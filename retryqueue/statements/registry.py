"""The worker registry's statements (``daz_retry_workers``): register, heartbeat and leave
(:mod:`retryqueue.registry`), and the live workers with their load for the dashboard's
Workers page (:mod:`retryqueue.browsing`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Insert, Update, case, func, insert, literal, select, update

from retryqueue.models import RetryHistory, RetryItem, RetryStatus, RetryWorker
from retryqueue.statements._base import AnySelect, _status_is, after, now_expr
from retryqueue.types import UTCDateTime

__all__ = [
    "insert_worker",
    "live_workers",
    "stop_worker",
    "touch_worker",
    "update_worker",
    "worker_attempts",
]


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
