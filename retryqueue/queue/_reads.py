"""Reading and monitoring: thin delegations to :mod:`retryqueue.monitoring`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.orm import Session

from retryqueue import monitoring
from retryqueue import validation as check
from retryqueue.models import RetryStatus
from retryqueue.queue._base import _QueueBase
from retryqueue.results import (
    Alert,
    DeadLetterGroup,
    ErrorGroup,
    HistoryEntry,
    HourlyCount,
    ItemFilter,
    ItemSnapshot,
    QueueStats,
    SuccessRate,
)


class _Reads(_QueueBase):
    """Items, history, stats and alerts, read on the caller's Session."""

    def get(self, session: Session, item_id: int) -> ItemSnapshot:
        """One item, or :class:`~retryqueue.errors.ItemNotFound`."""
        return monitoring.get_item(session, item_id)

    def find(self, session: Session, item_filter: ItemFilter) -> list[ItemSnapshot]:
        """The items a filter selects (what a requeue would move)."""
        return monitoring.find_items(session, check.item_filter(item_filter))

    def dead_letter_groups(
        self, session: Session, group_by: str = "error_code"
    ) -> list[DeadLetterGroup]:
        """Dead letters and failed items counted per error_code, event_type, plugin or
        channel (expired items have code ``EXPIRED``, deadlines ``DEADLINE_REACHED``)."""
        return monitoring.dead_letter_groups(session, group_by)

    def error_groups(
        self,
        session: Session,
        *,
        statuses: Sequence[RetryStatus | str] = monitoring.TRIAGE_STATUSES,
        limit: int = 100,
    ) -> list[ErrorGroup]:
        """Dead letters and failed items grouped by error code and fingerprint, largest
        first: count, first and last seen, plugins, a sample message (what
        ``retryqueue dead-letters --group-by fingerprint`` and the dashboard show)."""
        return monitoring.error_groups(session, statuses=statuses, limit=limit)

    def history(self, session: Session, item_id: int) -> list[HistoryEntry]:
        """An item's attempts and replays, oldest first."""
        return monitoring.item_history(session, item_id)

    def stats(self, session: Session) -> list[QueueStats]:
        """Counts per (status, event_type, plugin_name)."""
        return monitoring.stats(session)

    def alerts(self, session: Session) -> list[Alert]:
        """Items that need attention, with the reason (dead letters, failed items, stale
        locks, items near their retry limit, old pending items)."""
        return monitoring.alerts(session, self.now(session))

    def stuck(self, session: Session, older_than: float | timedelta = 3600) -> list[ItemSnapshot]:
        """Items processing for longer than ``older_than`` (seconds or timedelta)."""
        age = check.seconds("older_than", older_than)
        return monitoring.stuck(session, self.now(session), age)

    def items_per_hour(self, session: Session, hours: int = 24) -> list[HourlyCount]:
        """Items created per UTC hour over the last ``hours`` hours."""
        hours = check.bounded_int("hours", hours, low=1, high=24 * 366)
        return monitoring.items_per_hour(session, self.now(session), hours)

    def success_rate_by_event_type(self, session: Session) -> list[SuccessRate]:
        """Completed share of the finished items, per event type (pending ones not counted)."""
        return monitoring.success_rate_by_event_type(session)
