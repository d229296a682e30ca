"""The worker registry: running workers register, heartbeat and leave (``daz_retry_workers``).

What the dashboard's Workers page and ``retryqueue workers`` list (:func:`live_workers`,
with what each holds and its last hour). Informational only: a
worker's items are protected by their leases, not by this table.

Workers never DELETE here, so that the least-privilege runtime role (SELECT, INSERT and
UPDATE; see :func:`retryqueue.migrations.grant_statements`) can register: registering
updates the row an earlier run with the same id left (or inserts one), heartbeating
updates it, and leaving moves the heartbeat back to :data:`STOPPED`. Listings show only
workers that heartbeated within :data:`DEAD_AFTER_SECONDS`, so a stopped worker vanishes
at once and a crashed one after that delay; cleanup (the maintenance role) deletes both
kinds of rows (``CleanupResult.worker_rows_deleted``). Functions take the caller's
Session and never commit.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from retryqueue import validation as check
from retryqueue.errors import database_error
from retryqueue.models import WORKER_DEAD_AFTER_SECONDS
from retryqueue.monitoring import fetch_all
from retryqueue.statements import registry as sql

__all__ = [
    "DEAD_AFTER_SECONDS",
    "STOPPED",
    "WorkerInfo",
    "deregister_worker",
    "live_workers",
    "register_worker",
    "worker_heartbeat",
]

DEAD_AFTER_SECONDS = WORKER_DEAD_AFTER_SECONDS
"""A worker silent this long is presumed dead: hidden from listings, deleted by cleanup."""

STOPPED = datetime(1970, 1, 1, tzinfo=UTC)
"""The heartbeat of a worker that left: older than any listing's threshold."""


def register_worker(
    session: Session,
    worker_id: str,
    *,
    kind: str,
    concurrency: int,
    batch_size: int,
    at: datetime | None = None,
) -> None:
    """(Re-)register ``worker_id`` on this host and process, started now (an UPDATE of
    the row of an earlier run with the same id, else an INSERT: never a DELETE)."""
    worker_id = check.text("worker_id", worker_id)
    described = {
        "host": socket.gethostname()[:255] or "unknown",
        "pid": os.getpid(),
        "kind": check.text("kind", kind, max_length=50),
        "concurrency": concurrency,
        "batch_size": batch_size,
    }
    try:
        updated = session.execute(sql.update_worker(at, worker_id).values(**described))
        if not updated.rowcount:  # type: ignore[attr-defined]
            session.execute(sql.insert_worker(at).values(worker_id=worker_id, **described))
    except SQLAlchemyError as exc:
        raise database_error("register worker", exc) from exc


def worker_heartbeat(session: Session, worker_id: str, at: datetime | None = None) -> bool:
    """Move ``worker_id``'s heartbeat to now; False if its row is gone (register again)."""
    try:
        touched = session.execute(sql.touch_worker(at, worker_id)).rowcount  # type: ignore[attr-defined]
    except SQLAlchemyError as exc:
        raise database_error("worker heartbeat", exc) from exc
    return bool(touched)


def deregister_worker(session: Session, worker_id: str) -> None:
    """Mark ``worker_id`` as stopped (its heartbeat moves to :data:`STOPPED`): no listing
    shows it any more; cleanup deletes the row."""
    try:
        session.execute(sql.stop_worker(worker_id, STOPPED))
    except SQLAlchemyError as exc:
        raise database_error("deregister worker", exc) from exc


# -- the live workers, for listings ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker from the registry, with what it holds now and its last hour."""

    worker_id: str
    host: str
    pid: int
    kind: str
    concurrency: int
    batch_size: int
    started_at: datetime
    heartbeat_at: datetime
    held: int
    attempts_last_hour: int
    failures_last_hour: int


def live_workers(
    session: Session, at: datetime | None, dead_after_seconds: float = WORKER_DEAD_AFTER_SECONDS
) -> list[WorkerInfo]:
    """Workers that heartbeated within ``dead_after_seconds``, by host and id."""
    rows = fetch_all(session, sql.live_workers(at, dead_after_seconds), "workers")
    if not rows:
        return []
    last_hour = {
        worker_id: (int(attempts or 0), int(failures or 0))
        for worker_id, attempts, failures in fetch_all(session, sql.worker_attempts(at), "workers")
    }
    return [
        WorkerInfo(
            worker_id=row.RetryWorker.worker_id,
            host=row.RetryWorker.host,
            pid=row.RetryWorker.pid,
            kind=row.RetryWorker.kind,
            concurrency=row.RetryWorker.concurrency,
            batch_size=row.RetryWorker.batch_size,
            started_at=row.RetryWorker.started_at,
            heartbeat_at=row.RetryWorker.heartbeat_at,
            held=int(row.held),
            attempts_last_hour=last_hour.get(row.RetryWorker.worker_id, (0, 0))[0],
            failures_last_hour=last_hour.get(row.RetryWorker.worker_id, (0, 0))[1],
        )
        for row in rows
    ]
