"""Frozen dataclasses returned (and accepted) by the queue and monitoring functions."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from types import MappingProxyType
from typing import Any

from retryqueue.breaker_policy import CircuitStatus
from retryqueue.fingerprint import normalise_message
from retryqueue.models import RetryStatus

__all__ = [
    "ITEM_SORTS",
    "Alert",
    "CircuitEvent",
    "CircuitState",
    "ClaimedItem",
    "CleanupResult",
    "DeadLetterGroup",
    "EnqueuedItem",
    "ErrorGroup",
    "Gate",
    "HistoryEntry",
    "HourlyCount",
    "ItemFilter",
    "ItemQuery",
    "ItemSnapshot",
    "QueueStats",
    "SuccessRate",
    "Transition",
    "freeze",
]


_SCALARS = frozenset({str, int, float, bool, type(None)})


def freeze(value: Any) -> Any:
    """A read-only view of decoded JSON: dicts become mappings, lists become tuples."""
    kind = type(value)
    if kind in _SCALARS:  # the common cases first: the worker freezes every payload
        return value
    if kind is dict or isinstance(value, Mapping):
        return MappingProxyType({key: freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(item) for item in value)
    return value


@dataclass(frozen=True, slots=True)
class EnqueuedItem:
    """The result of an enqueue: the row's id and event_id.

    ``created`` is False when an item with the same event_id already existed (idempotent
    enqueue); ``id`` is then the existing row's.
    """

    id: int
    event_id: uuid.UUID
    created: bool


@dataclass(frozen=True, slots=True)
class ClaimedItem:
    """An item acquired by a worker, with the lease that proves ownership.

    ``event_data`` and ``event_metadata`` are read-only views; ``attempt`` is the number of
    this attempt (1 for the first run). Pass the whole object back to ``complete``/``fail``
    so that the lease token is checked.
    """

    id: int
    event_id: uuid.UUID
    event_type: str
    channel_name: str | None
    plugin_name: str | None
    event_data: Any
    event_metadata: Mapping[str, Any] | None
    retry_count: int
    max_retries: int
    retry_delay_seconds: int
    backoff_multiplier: float
    priority: int
    correlation_id: str | None
    tags: tuple[str, ...]
    created_at: datetime
    next_retry_at: datetime
    locked_by: str
    locked_at: datetime
    lease_token: uuid.UUID

    @property
    def attempt(self) -> int:
        """The number of this attempt, starting at 1."""
        return self.retry_count + 1


@dataclass(frozen=True, slots=True)
class ItemSnapshot:
    """A queue row as read for display (show, stuck, replay dry-runs)."""

    id: int
    event_id: uuid.UUID
    event_type: str
    channel_name: str | None
    plugin_name: str | None
    status: RetryStatus
    priority: int
    retry_count: int
    max_retries: int
    error_message: str | None
    last_error_code: str | None
    created_at: datetime
    next_retry_at: datetime
    last_attempted_at: datetime | None
    completed_at: datetime | None
    expires_at: datetime
    locked_by: str | None
    locked_at: datetime | None
    correlation_id: str | None
    tags: tuple[str, ...]
    retry_deadline: datetime | None = None
    """No retry is scheduled after this time (None: max_retries alone decides)."""
    error_fingerprint: str | None = None
    """The last failure's group key (see :mod:`retryqueue.fingerprint`)."""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One row of ``daz_retry_history``."""

    id: int
    retry_queue_id: int
    event_id: uuid.UUID
    attempt_number: int
    status: str
    error_message: str | None
    error_code: str | None
    worker_id: str | None
    attempted_at: datetime
    duration_ms: int | None
    error_fingerprint: str | None = None
    exception_type: str | None = None
    error_traceback: str | None = None


@dataclass(frozen=True, slots=True)
class CleanupResult:
    """What a cleanup removed.

    ``deleted_count``: queue rows deleted (finished past retention).
    ``expired_count``: pending items past their expiry moved to ``dead_letter`` (code
    ``EXPIRED``, an ``expired`` history row) instead of being deleted unseen; cleanup
    deletes them only after the retention, like any dead letter.
    ``archived_count``: always 0 now (expired items used to be deleted with an
    ``expired`` history row); kept so that existing readers of the result keep working.
    ``history_deleted_count``: history rows older than twice the retention.
    ``partitions_dropped``: monthly partitions dropped (PostgreSQL, partitioned table);
    their rows are counted in ``deleted_count``.
    ``circuit_events_deleted``: circuit breaker audit rows older than twice the retention.
    ``hourly_rows_deleted``: the dashboard's rolled-up hours (``daz_retry_hourly``) older
    than twice the retention, like history.
    ``worker_rows_deleted``: rows of the worker registry (``daz_retry_workers``) of workers
    that stopped, or fell silent over ``retryqueue.registry.DEAD_AFTER_SECONDS`` ago.
    """

    deleted_count: int = 0
    archived_count: int = 0
    expired_count: int = 0
    history_deleted_count: int = 0
    partitions_dropped: int = 0
    circuit_events_deleted: int = 0
    hourly_rows_deleted: int = 0
    worker_rows_deleted: int = 0

    def __add__(self, other: CleanupResult) -> CleanupResult:
        return CleanupResult(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(self))
        )


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts for one (status, event_type, plugin_name) group."""

    status: RetryStatus
    event_type: str
    plugin_name: str | None
    count: int
    avg_retry_count: float
    max_retry_count: int
    oldest_created_at: datetime
    newest_created_at: datetime
    locked_count: int
    deadline_count: int = 0
    """How many of the group's items carry a retry deadline."""


@dataclass(frozen=True, slots=True)
class Alert:
    """An item that needs attention, and why (``reason``)."""

    item_id: int
    event_id: uuid.UUID
    event_type: str
    plugin_name: str | None
    channel_name: str | None
    status: RetryStatus
    retry_count: int
    max_retries: int
    reason: str
    error_message: str | None
    created_at: datetime
    locked_by: str | None
    locked_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeadLetterGroup:
    """Dead-letter and failed items sharing one error code, event type, plugin or channel
    (``key``)."""

    key: str | None
    count: int
    sample_error: str | None
    oldest_created_at: datetime
    newest_created_at: datetime


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    """Finished items that failed the same way: one error code and fingerprint (see
    :mod:`retryqueue.fingerprint`).

    ``first_seen``/``last_seen``: the earliest and latest last failure of its items;
    ``plugins``: the plugins it touches (``"-"`` for items without one);
    ``sample_error``: one of its messages (decrypted when a key is configured).
    ``fingerprint`` is None for items failed before fingerprints were stored.
    """

    error_code: str | None
    fingerprint: str | None
    count: int
    first_seen: datetime
    last_seen: datetime
    sample_error: str | None
    plugins: tuple[str, ...]

    @property
    def pattern(self) -> str:
        """The sample message with its values replaced: what the group's messages share."""
        return normalise_message(self.sample_error)


@dataclass(frozen=True, slots=True)
class HourlyCount:
    """Items created in the hour starting at ``hour`` (UTC)."""

    hour: datetime
    count: int


@dataclass(frozen=True, slots=True)
class SuccessRate:
    """Share of an event type's finished items that completed.

    ``total`` counts finished items only (completed, failed, dead_letter): pending and
    processing items have no outcome yet.
    """

    event_type: str
    total: int
    completed: int
    success_rate: float


@dataclass(frozen=True, slots=True)
class ItemFilter:
    """Which items an administrative operation (requeue, purge, replay) applies to.

    Every field narrows the selection; an empty filter matches every item in ``statuses``.
    ``fingerprint`` selects one error group (see :class:`ErrorGroup`). Time bounds are
    aware datetimes: ``created_*`` filter on created_at, ``failed_*`` on last_attempted_at.
    """

    statuses: Sequence[RetryStatus] = (RetryStatus.DEAD_LETTER, RetryStatus.FAILED)
    ids: Sequence[int] | None = None
    event_type: str | None = None
    plugin_name: str | None = None
    channel_name: str | None = None
    error_code: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    failed_after: datetime | None = None
    failed_before: datetime | None = None
    limit: int | None = None
    fingerprint: str | None = None
    """An error group's full fingerprint (``"none"``: items without one)."""


# -- circuit breaker (see retryqueue.circuits) --------------------------------------------


@dataclass(frozen=True, slots=True)
class CircuitState:
    """One circuit as stored: its status, counters, cool-down and probe.

    ``window_attempts``/``window_failures`` count the current bucket of the failure-rate
    window; ``probe_owner`` is who holds the half-open probe; ``reason`` says why the
    latest transition happened.
    """

    key: str
    status: CircuitStatus
    consecutive_failures: int
    window_attempts: int
    window_failures: int
    opened_at: datetime | None
    open_until: datetime | None
    cooldown_seconds: float
    probe_owner: str | None
    probe_deadline: datetime | None
    reason: str | None
    updated_at: datetime | None


@dataclass(frozen=True, slots=True)
class Transition:
    """A circuit changed state (also written to the audit trail and logged)."""

    key: str
    from_status: CircuitStatus
    to_status: CircuitStatus
    reason: str
    at: datetime
    cooldown_seconds: float | None
    open_until: datetime | None


@dataclass(frozen=True, slots=True)
class CircuitEvent:
    """One row of the audit trail ``daz_retry_circuit_events``."""

    id: int
    key: str
    from_status: CircuitStatus
    to_status: CircuitStatus
    reason: str
    cooldown_seconds: float | None
    actor: str | None
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class Gate:
    """What a worker may claim now.

    ``blocked``: keys whose items the normal claim must skip (open and half-open
    circuits, this caller's probes included); pass it as ``acquire(skip_keys=...)``.
    ``probes``: keys whose single probe this caller won; claim one item of each with
    ``acquire(only_key=key, batch_size=1)``, then :meth:`CircuitBreaker.record` its
    outcome (or :meth:`CircuitBreaker.release_probe` if there was nothing to claim).
    ``per_event_type``: pass it to ``acquire`` so that it builds keys the same way.
    """

    blocked: frozenset[str] = frozenset()
    probes: tuple[str, ...] = ()
    per_event_type: bool = False
    transitions: tuple[Transition, ...] = ()


# -- the dashboard's item browser (see retryqueue.browsing) --------------------------------

ITEM_SORTS: tuple[str, ...] = ("id", "created_at", "next_retry_at", "priority", "retry_count")
"""Columns the item list can be sorted by (never null, so keyset pagination works)."""


@dataclass(frozen=True, slots=True)
class ItemQuery:
    """A page of the item browser: filters, order and the keyset cursor.

    Every filter narrows the selection (empty ``statuses``: every status; ``ids``: these
    items only). ``error_text``
    matches a substring of the error message, case-insensitively (not on encrypted
    messages); ``fingerprint`` is an error group (``"none"``: items without one).
    ``after`` is the (sort value, id) of the previous page's last row; ``before`` (going
    back) the (sort value, id) of the next page's first row. At most one of them is set.
    """

    statuses: tuple[RetryStatus, ...] = ()
    ids: tuple[int, ...] | None = None
    event_type: str | None = None
    plugin_name: str | None = None
    channel_name: str | None = None
    correlation_id: str | None = None
    tag: str | None = None
    error_code: str | None = None
    error_text: str | None = None
    fingerprint: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    sort: str = "id"
    descending: bool = True
    limit: int = 50
    after: tuple[Any, int] | None = None
    before: tuple[Any, int] | None = None
