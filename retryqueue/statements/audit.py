"""The audit trail of dashboard actions (``daz_retry_audit``): one record per action,
finished with how many items it changed, and read back newest first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Insert, Update, insert, select, update

from retryqueue.models import RetryDashboardAudit
from retryqueue.statements._base import AnySelect, now_expr

__all__ = ["audit_entries", "finish_audit", "insert_audit"]


def insert_audit(at: datetime | None) -> Insert:
    """INSERT of one audit record, RETURNING its id where the dialect can."""
    return insert(RetryDashboardAudit).values(occurred_at=now_expr(at))


def finish_audit(
    at: datetime | None, audit_id: int, affected: int, *, finished: bool, detail: str | None
) -> Update:
    """Record how many items an audited action has changed, and whether it has finished."""
    values: dict[str, Any] = {"affected": affected, "detail": detail}
    if finished:
        values["finished_at"] = now_expr(at)
    return update(RetryDashboardAudit).where(RetryDashboardAudit.id == audit_id).values(**values)


def audit_entries(limit: int, before_id: int | None) -> AnySelect:
    """The newest audit records (older than ``before_id``), newest first."""
    stmt = select(RetryDashboardAudit)
    if before_id is not None:
        stmt = stmt.where(RetryDashboardAudit.id < before_id)
    return stmt.order_by(RetryDashboardAudit.id.desc()).limit(limit)
