"""Claimed items built in memory, for the tests of the worker's pure parts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from retryqueue.results import ClaimedItem

__all__ = ["claimed"]


def claimed(
    event_type: str = "payment.capture",
    *,
    retry_count: int = 0,
    max_retries: int = 3,
    plugin_name: str | None = None,
    item_id: int = 1,
) -> ClaimedItem:
    """A claimed item as a worker holds it, for tests that need no database."""
    now = datetime(2026, 1, 5, tzinfo=UTC)
    return ClaimedItem(
        id=item_id,
        event_id=uuid.uuid4(),
        event_type=event_type,
        channel_name=None,
        plugin_name=plugin_name,
        event_data={},
        event_metadata=None,
        retry_count=retry_count,
        max_retries=max_retries,
        retry_delay_seconds=60,
        backoff_multiplier=2.0,
        priority=5,
        correlation_id=None,
        tags=(),
        created_at=now,
        next_retry_at=now,
        locked_by="w",
        locked_at=now,
        lease_token=uuid.uuid4(),
    )
