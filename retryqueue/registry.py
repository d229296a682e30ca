"""The worker registry: running workers register, heartbeat and leave (``daz_retry_workers``).

What the dashboard's Workers page and ``retryqueue workers`` list. Informational only: a
worker's items are protected by their leases, not by this table. Rows of workers that
stopped heartbeating (crashed, killed) are pruned by the next worker that registers or
heartbeats, and hidden by the listing as soon as they are older than its threshold.
Functions take the caller's Session and never commit.
"""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from retryqueue import statements
from retryqueue import validation as check
from retryqueue.errors import database_error
from retryqueue.statements import browse as sql

__all__ = [
    "DEAD_AFTER_SECONDS",
    "deregister_worker",
    "register_worker",
    "worker_heartbeat",
]

DEAD_AFTER_SECONDS = 600.0
"""A worker silent this long is presumed dead: hidden from listings, then pruned."""


def _cutoff(session: Session, at: datetime | None) -> datetime:
    now: datetime = session.execute(statements.database_now(at)).scalar_one()
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now
    return now - timedelta(seconds=DEAD_AFTER_SECONDS)


def register_worker(
    session: Session,
    worker_id: str,
    *,
    kind: str,
    concurrency: int,
    batch_size: int,
    at: datetime | None = None,
) -> None:
    """(Re-)register ``worker_id`` on this host and process, started now."""
    worker_id = check.text("worker_id", worker_id)
    try:
        session.execute(sql.delete_workers(worker_id))
        session.execute(
            sql.insert_worker(at).values(
                worker_id=worker_id,
                host=socket.gethostname()[:255] or "unknown",
                pid=os.getpid(),
                kind=check.text("kind", kind, max_length=50),
                concurrency=concurrency,
                batch_size=batch_size,
            )
        )
        session.execute(sql.delete_workers(None, beat_before=_cutoff(session, at)))
    except SQLAlchemyError as exc:
        raise database_error("register worker", exc) from exc


def worker_heartbeat(session: Session, worker_id: str, at: datetime | None = None) -> bool:
    """Move ``worker_id``'s heartbeat to now; False if its row is gone (register again)."""
    try:
        touched = session.execute(sql.touch_worker(at, worker_id)).rowcount  # type: ignore[attr-defined]
        session.execute(sql.delete_workers(None, beat_before=_cutoff(session, at)))
    except SQLAlchemyError as exc:
        raise database_error("worker heartbeat", exc) from exc
    return bool(touched)


def deregister_worker(session: Session, worker_id: str) -> None:
    """Remove ``worker_id``'s row (it is stopping)."""
    try:
        session.execute(sql.delete_workers(worker_id))
    except SQLAlchemyError as exc:
        raise database_error("deregister worker", exc) from exc
