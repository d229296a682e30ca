"""factory-boy factories for queue rows, with a trait per lifecycle state.

Requires ``factory-boy`` (``pip install "retryqueue[testing]"``). The pytest plugin binds
the factories to the test's session; outside it, set it yourself::

    RetryItemFactory._meta.sqlalchemy_session = session

Rows are flushed, not committed. Times come from the kit's active clock (the ``rq_clock``
fixture), else from the host clock.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import factory

from retryqueue.clock import Clock
from retryqueue.fingerprint import fingerprint
from retryqueue.models import RetryHistory, RetryItem, RetryStatus

__all__ = ["RetryHistoryFactory", "RetryItemFactory", "use_clock"]

_active_clock: list[Clock] = []


def use_clock(clock: Clock | None) -> None:
    """Make the factories take their times from ``clock`` (None: the host clock)."""
    _active_clock.clear()
    if clock is not None:
        _active_clock.append(clock)


def _now() -> datetime:
    if _active_clock:
        now = _active_clock[0].now()
        if now is not None:
            return now
    return datetime.now(UTC)


def _ago(**delta: float) -> Any:
    return factory.LazyFunction(lambda: _now() - timedelta(**delta))


class RetryItemFactory(factory.alchemy.SQLAlchemyModelFactory):  # type: ignore[misc]
    """A ``daz_retry_queue`` row; pending and due unless a trait says otherwise.

    Traits: ``processing`` (locked by ``worker-1`` with a lease), ``stale`` (processing,
    locked two hours ago), ``completed``, ``failed`` (permanent error), ``dead_letter``
    (retries used up, with an error), ``scheduled`` (a retry due in a minute).
    """

    class Meta:
        model = RetryItem
        sqlalchemy_session_persistence = "flush"

    event_id = factory.LazyFunction(uuid.uuid4)
    event_type = "cytube.event.chatMsg"
    channel_name = factory.Sequence(lambda n: f"channel-{n % 3}")
    plugin_name = "sql"
    event_data = factory.Sequence(lambda n: {"message": f"message {n}", "user": f"user{n}"})
    event_metadata = None
    retry_count = 0
    max_retries = 3
    retry_delay_seconds = 60
    backoff_multiplier = 2.0
    status = RetryStatus.PENDING
    priority = 5
    created_at = factory.LazyFunction(_now)
    next_retry_at = factory.LazyAttribute(lambda item: item.created_at)
    expires_at = factory.LazyAttribute(lambda item: item.created_at + timedelta(days=7))
    tags = None
    error_message = None
    last_error_code = None
    # As the queue stores it on every failure, so that factory dead letters group.
    error_fingerprint = factory.LazyAttribute(
        lambda item: fingerprint(item.last_error_code, item.error_message)
    )

    class Params:
        processing = factory.Trait(
            status=RetryStatus.PROCESSING,
            locked_by="worker-1",
            locked_at=factory.LazyFunction(_now),
            last_attempted_at=factory.LazyFunction(_now),
            lease_token=factory.LazyFunction(uuid.uuid4),
        )
        stale = factory.Trait(
            status=RetryStatus.PROCESSING,
            locked_by="crashed-worker",
            locked_at=_ago(hours=2),
            last_attempted_at=_ago(hours=2),
            lease_token=factory.LazyFunction(uuid.uuid4),
        )
        completed = factory.Trait(
            status=RetryStatus.COMPLETED,
            completed_at=factory.LazyFunction(_now),
            last_attempted_at=factory.LazyFunction(_now),
        )
        failed = factory.Trait(
            status=RetryStatus.FAILED,
            error_message="permanent failure",
            last_error_code="PERMANENT",
            last_attempted_at=factory.LazyFunction(_now),
        )
        dead_letter = factory.Trait(
            status=RetryStatus.DEAD_LETTER,
            retry_count=factory.SelfAttribute("max_retries"),
            error_message="Connection timeout",
            last_error_code="TIMEOUT",
            last_attempted_at=factory.LazyFunction(_now),
        )
        scheduled = factory.Trait(
            retry_count=1,
            next_retry_at=factory.LazyFunction(lambda: _now() + timedelta(minutes=1)),
            error_message="Connection timeout",
            last_error_code="TIMEOUT",
        )


class RetryHistoryFactory(factory.alchemy.SQLAlchemyModelFactory):  # type: ignore[misc]
    """A ``daz_retry_history`` row for an item (pass ``item=``) or for loose ids.

    Traits: ``completed`` (default), ``retry_scheduled``, ``dead_lettered``, ``failed``,
    ``lock_expired``.
    """

    class Meta:
        model = RetryHistory
        sqlalchemy_session_persistence = "flush"
        exclude = ("item",)

    item = None
    retry_queue_id = factory.LazyAttribute(lambda h: h.item.id if h.item else 1)
    event_id = factory.LazyAttribute(lambda h: h.item.event_id if h.item else uuid.uuid4())
    attempt_number = factory.LazyAttribute(lambda h: h.item.retry_count + 1 if h.item else 1)
    status = "completed"
    worker_id = "worker-1"
    attempted_at = factory.LazyFunction(_now)
    duration_ms = 12
    error_message = None
    error_code = None
    error_fingerprint = factory.LazyAttribute(
        lambda row: fingerprint(row.error_code, row.error_message)
    )

    class Params:
        retry_scheduled = factory.Trait(
            status="retry_scheduled", error_message="Connection timeout", error_code="TIMEOUT"
        )
        dead_lettered = factory.Trait(
            status="dead_lettered", error_message="Connection timeout", error_code="TIMEOUT"
        )
        failed = factory.Trait(
            status="failed", error_message="permanent failure", error_code="PERMANENT"
        )
        lock_expired = factory.Trait(
            status="lock_expired", error_message="lock expired", error_code="LOCK_EXPIRED"
        )
