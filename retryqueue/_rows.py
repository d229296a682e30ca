"""The rows the queue writes and reads back: new items (validated), history rows, claimed
items, leases. Private to :mod:`retryqueue.queue`, split out to keep that module about the
operations themselves. New items and their validation live in :mod:`retryqueue._new_rows`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC
from typing import Any

from retryqueue import encryption
from retryqueue import validation as check
from retryqueue._frozen import builder
from retryqueue.errors import InvalidArgument
from retryqueue.fingerprint import fingerprint
from retryqueue.policy import Outcome
from retryqueue.results import ClaimedItem, freeze

__all__ = [
    "TRACEBACK_LIMIT",
    "claimed_item",
    "failure_forensics",
    "history_row",
    "lease_of",
    "valid_ids",
]


def lease_of(
    item: ClaimedItem | int,
    worker_id: str | None,
    lease_token: uuid.UUID | None,
    *,
    force: bool = False,
) -> tuple[int, str | None, uuid.UUID | None]:
    """(id, worker id, lease token) of an outcome's item, given as a ClaimedItem or by id.

    The lease token is the only key of a worker's outcome: by id it is required. An
    operator acting on an item by id passes ``force=True`` instead (token None, worker id
    optional: it is only recorded in the history row).
    """
    if not isinstance(force, bool):
        raise InvalidArgument("force", "expected a bool")
    if isinstance(item, ClaimedItem):
        if force:
            raise InvalidArgument(
                "force", "acts on an item id; a ClaimedItem's outcome goes by its lease"
            )
        if worker_id is not None and worker_id != item.locked_by:
            raise InvalidArgument(
                "worker_id",
                f"{worker_id!r} differs from the claimed item's worker {item.locked_by!r} "
                "(with a ClaimedItem, pass error_message= by keyword)",
            )
        if lease_token is not None and lease_token != item.lease_token:
            raise InvalidArgument("lease_token", "differs from the claimed item's token")
        return item.id, item.locked_by, item.lease_token
    item_id = check.bounded_int("item_id", item, low=1, high=2**63 - 1)
    if force:
        if lease_token is not None:
            raise InvalidArgument("force", "ignores leases; pass lease_token or force=True")
        return item_id, check.optional_text("worker_id", worker_id), None
    return item_id, check.text("worker_id", worker_id), required_token(lease_token)


def required_token(lease_token: uuid.UUID | None) -> uuid.UUID:
    """A worker's lease token, which outcomes, heartbeats and releases require."""
    if lease_token is None:
        raise InvalidArgument(
            "lease_token",
            "is required: an outcome from a worker is keyed by its lease "
            "(an operator acting on an item by id passes force=True)",
        )
    if not isinstance(lease_token, uuid.UUID):
        raise InvalidArgument("lease_token", "expected a UUID")
    return lease_token


def valid_ids(item_ids: Sequence[int] | None) -> list[int] | None:
    """Validated item ids (None: all of the worker's)."""
    if item_ids is None:
        return None
    return [check.bounded_int("item_ids", item_id, low=1, high=2**63 - 1) for item_id in item_ids]


def history_row(
    item_id: int,
    event_id: uuid.UUID,
    attempt: int,
    status: Outcome | str,
    *,
    worker_id: str | None = None,
    error_message: str | None = None,
    error_code: str | None = None,
    duration_ms: int | None = None,
    error_fingerprint: str | None = None,
    exception_type: str | None = None,
    error_traceback: str | None = None,
) -> dict[str, Any]:
    """One daz_retry_history row, as INSERT parameters."""
    return {
        "error_fingerprint": error_fingerprint,
        "exception_type": exception_type,
        "error_traceback": error_traceback,
        "retry_queue_id": item_id,
        "event_id": event_id,
        "attempt_number": attempt,
        "status": status.value if isinstance(status, Outcome) else status,
        "error_message": error_message,
        "error_code": error_code,
        "worker_id": worker_id,
        "duration_ms": duration_ms,
    }


TRACEBACK_LIMIT = 16_000
"""Characters of a failed attempt's traceback kept on its history row (the last ones)."""

_TRUNCATED = "... (truncated)\n"


def failure_forensics(
    error_code: str | None,
    error_message: str | None,
    exception_type: str | None,
    error_traceback: str | None,
) -> dict[str, str | None]:
    """The history columns of a failure's forensics: fingerprint, exception type, traceback.

    The traceback keeps its last :data:`TRACEBACK_LIMIT` characters (the innermost frames
    and the exception line); a longer exception type name is cut at 255 characters.
    """
    if exception_type is not None:
        exception_type = check.text("exception_type", exception_type, max_length=10_000)[:255]
    if error_traceback is not None:
        if not isinstance(error_traceback, str):
            raise InvalidArgument("error_traceback", "expected a string")
        # Diagnostic text quotes whatever the handler's values held: lone surrogates and
        # NUL (which no backend stores as text) are written escaped instead of refused.
        error_traceback = (
            str(error_traceback)
            .encode("utf-8", "backslashreplace")
            .decode("utf-8")
            .replace("\x00", "\\x00")
        )
        if len(error_traceback) > TRACEBACK_LIMIT:
            keep = TRACEBACK_LIMIT - len(_TRUNCATED)
            error_traceback = _TRUNCATED + error_traceback[-keep:]
    return {
        "error_fingerprint": fingerprint(error_code, error_message),
        "exception_type": exception_type,
        "error_traceback": error_traceback,
    }


_claimed = builder(ClaimedItem)  # ClaimedItem(...) without its per-field setattr cost


def claimed_item(row: Any, first: int = 0, *, driver_values: bool = False) -> ClaimedItem:
    """A :class:`ClaimedItem` from a row whose columns from ``first`` on are
    ``statements.CLAIM_COLUMNS``, in order (the hot path: positional, no lookups by name).

    ``driver_values``: the columns are as psycopg returns them, without SQLAlchemy's
    result processing (the PostgreSQL flush reads them so): event_data is decrypted here,
    and the times are read in UTC.
    """
    (
        item_id,
        event_id,
        event_type,
        channel_name,
        plugin_name,
        event_data,
        event_metadata,
        retry_count,
        max_retries,
        retry_delay_seconds,
        backoff_multiplier,
        priority,
        correlation_id,
        tags,
        created_at,
        next_retry_at,
        locked_by,
        locked_at,
        lease_token,
    ) = row[first:] if first else row
    if driver_values:
        event_data = encryption.open_json(event_data)
        created_at = created_at.astimezone(UTC)
        next_retry_at = next_retry_at.astimezone(UTC)
        locked_at = locked_at.astimezone(UTC)
    return _claimed(
        item_id,
        event_id,
        event_type,
        channel_name,
        plugin_name,
        freeze(event_data),
        freeze(event_metadata),
        retry_count,
        max_retries,
        retry_delay_seconds,
        float(backoff_multiplier),
        priority,
        correlation_id,
        tuple(tags or ()),
        created_at,
        next_retry_at,
        locked_by,
        locked_at,
        lease_token,
    )
