"""Rows no key of this process can open: what an older version, or a forger, left behind."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from retryqueue.encryption import MARKER
from retryqueue.models import RetryItem

__all__ = ["add_undecryptable_item"]


def add_undecryptable_item(session: Session, now: datetime, event_type: str = "ok") -> int:
    """Insert a due pending item whose event_data is a sealed-looking token no key opens;
    its id. Written straight to the table (``enqueue`` refuses the reserved marker)."""
    forged = RetryItem(
        event_type=event_type,
        event_data={MARKER: "gAAAAAB-forged"},
        created_at=now,
        next_retry_at=now,
        expires_at=now + timedelta(days=1),
    )
    session.add(forged)
    session.flush()
    return forged.id
