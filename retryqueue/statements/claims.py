"""Acquire: the claim (SKIP LOCKED, circuit keys, rate limits) and stale-lock reclaim.
Recording outcomes is :mod:`retryqueue.statements.outcomes`."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    Select,
    String,
    Update,
    Uuid,
    and_,
    bindparam,
    literal_column,
    or_,
    select,
    update,
)

from retryqueue.models import (
    RetryItem,
    RetryStatus,
)
from retryqueue.statements._base import (
    _SYNC_OFF,
    AnySelect,
    _stamp_now,
    _stamp_plus_seconds,
    _status_is,
    after,
    claimable_now,
    now_expr,
)
from retryqueue.statements.limits import KeyFilter, key_filter, skipped_keys
from retryqueue.types import UTCDateTime, utc_now

CLAIM_COLUMNS = (
    RetryItem.id,
    RetryItem.event_id,
    RetryItem.event_type,
    RetryItem.channel_name,
    RetryItem.plugin_name,
    RetryItem.event_data,
    RetryItem.event_metadata,
    RetryItem.retry_count,
    RetryItem.max_retries,
    RetryItem.retry_delay_seconds,
    RetryItem.backoff_multiplier,
    RetryItem.priority,
    RetryItem.correlation_id,
    RetryItem.tags,
    RetryItem.created_at,
    RetryItem.next_retry_at,
    RetryItem.locked_by,
    RetryItem.locked_at,
    RetryItem.lease_token,
)


_FAILURE_COLUMNS = (
    RetryItem.id,
    RetryItem.event_id,
    RetryItem.retry_count,
    RetryItem.max_retries,
    RetryItem.retry_delay_seconds,
    RetryItem.backoff_multiplier,
    RetryItem.locked_by,
    RetryItem.locked_at,
    RetryItem.created_at,
    RetryItem.retry_deadline,
)


def _stale(at: datetime | None, lock_timeout: float) -> list[ColumnElement[bool]]:
    """Processing and past its lock's expiry: the holder's own ``lock_expires_at``; rows
    locked before revision rq0006 (no expiry stored) fall back to ``locked_at`` plus the
    reclaimer's ``lock_timeout``."""
    return [
        _status_is(RetryStatus.PROCESSING),
        or_(
            RetryItem.lock_expires_at < now_expr(at),
            and_(
                RetryItem.lock_expires_at.is_(None),
                or_(RetryItem.locked_at < after(at, -lock_timeout), RetryItem.locked_at.is_(None)),
            ),
        ),
    ]


def select_stale(
    at: datetime | None,
    lock_timeout: float,
    limit: int,
    *,
    only_ids: Sequence[int] | None = None,
) -> AnySelect:
    """Processing items whose lock has expired — whoever holds them.

    Expired: past the ``lock_expires_at`` its holder set; for rows without one (locked
    before revision rq0006), ``locked_at`` older than ``lock_timeout``.

    Rows another transaction is working on are skipped, not waited for. ``only_ids``
    (MySQL) restricts the locking read to ids found by :func:`stale_ids`.
    """
    clauses = _stale(at, lock_timeout)
    if only_ids is not None:
        clauses.append(RetryItem.id.in_(list(only_ids)))
    return (
        select(*_FAILURE_COLUMNS, RetryItem.expires_at, now_expr(at).label("now"))
        .where(*clauses)
        .order_by(RetryItem.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


def stale_ids(at: datetime | None, lock_timeout: float, limit: int) -> Select[int]:
    """Ids that look stale, read without locks (MySQL: then locked by id)."""
    return select(RetryItem.id).where(*_stale(at, lock_timeout)).order_by(RetryItem.id).limit(limit)


def reclaim_stale(item_id: int, at: datetime | None, lock_timeout: float) -> ColumnElement[bool]:
    """The guard under which a stale item may be reclaimed (still processing, still stale)."""
    return and_(RetryItem.id == item_id, *_stale(at, lock_timeout))


Bound = tuple[Update, dict[str, Any]]
"""A statement built once (cached) and the parameters of one execution."""


def _now_param(server_clock: bool, name: str) -> ColumnElement[datetime]:
    return utc_now() if server_clock else bindparam(name, type_=UTCDateTime())


def circuit_key_of_item(per_event_type: bool) -> ColumnElement[str | None]:
    """An item's circuit breaker key: plugin_name, or ``plugin_name || ':' || event_type``.

    NULL for items without a plugin (no circuit guards them).
    """
    if not per_event_type:
        return RetryItem.plugin_name.expression
    return RetryItem.plugin_name + literal_column("':'") + RetryItem.event_type


def _circuit_filter(per_event_type: bool, only: Any = None, skip: Any = None) -> list[Any]:
    """The claim's circuit predicate: only ``only``'s items, or none of ``skip``'s (values
    or bind parameters); no predicate at all when neither is given."""
    key = circuit_key_of_item(per_event_type)
    if only is not None:
        return [key == only]
    if skip is not None:
        return [or_(RetryItem.plugin_name.is_(None), key.not_in(skip))]
    return []


def claimable_keys(
    at: datetime | None,
    keys: Sequence[str],
    *,
    per_event_type: bool = False,
    limit_filter: KeyFilter | None = None,
) -> Select[str | None]:
    """The circuit keys among ``keys`` that have an item :func:`claim` could take now
    (a half-open probe is only worth starting for those): not counting the items
    ``limit_filter`` skips (paused keys), which the probe's claim would skip too."""
    now = now_expr(at)
    key = circuit_key_of_item(per_event_type)
    return (
        select(key)
        .where(
            *claimable_now(now),
            key.in_(list(keys)),
            *skipped_keys(limit_filter),
        )
        .distinct()
    )


def _claimable(now: Any, limit: Any, circuit: list[Any]) -> Select[int]:
    """Ids of claimable items, best first, locked with SKIP LOCKED: pending, due,
    unlocked and not expired, by priority DESC, next_retry_at, id (the claim index)."""
    return (
        select(RetryItem.id)
        .where(
            *claimable_now(now),
            *circuit,
        )
        .order_by(RetryItem.priority.desc(), RetryItem.next_retry_at, RetryItem.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )


def _claimed_values(stamp: Any, expires: Any, worker: Any, token: Any) -> dict[str, Any]:
    """The SET of a claim: ``stamp`` is the lock's time (the statement's, not the
    transaction's), ``expires`` when the lock expires (stamp + the claimer's lock_timeout)."""
    return {
        "status": RetryStatus.PROCESSING,
        "locked_by": worker,
        "locked_at": stamp,
        "lock_expires_at": expires,
        "lease_token": token,
        "last_attempted_at": stamp,
    }


def _lock_stamps(server_clock: bool, prefix: str) -> tuple[Any, Any]:
    """(lock stamp, lock expiry) of a cached statement: the statement's time on the server
    and that plus ``{prefix}_lease`` seconds; or the bound ``{prefix}_now`` and
    ``{prefix}_expires``."""
    if server_clock:
        return _stamp_now(), _stamp_plus_seconds(bindparam(f"{prefix}_lease", type_=Float()))
    return (
        bindparam(f"{prefix}_now", type_=UTCDateTime()),
        bindparam(f"{prefix}_expires", type_=UTCDateTime()),
    )


def lock_params(at: datetime | None, prefix: str, lock_timeout: float) -> dict[str, Any]:
    """The parameters :func:`_lock_stamps` binds."""
    if at is None:
        return {f"{prefix}_lease": float(lock_timeout)}
    return {f"{prefix}_now": at, f"{prefix}_expires": at + timedelta(seconds=lock_timeout)}


def _limit_filter(shape: tuple[bool, bool, bool, bool]) -> list[Any]:
    """The claim's rate limit/pause predicate with bind parameters (see :class:`KeyFilter`)."""
    only_plugin, only_pair, skip_plugins, skip_pairs = shape
    return key_filter(
        bindparam("limit_only_plugin", type_=String()) if only_plugin else None,
        bindparam("limit_only_pair", type_=String()) if only_pair else None,
        bindparam("limit_skip_plugins", expanding=True, type_=String()) if skip_plugins else None,
        bindparam("limit_skip_pairs", expanding=True, type_=String()) if skip_pairs else None,
    )


_NO_LIMITS = (False, False, False, False)


@functools.cache
def _claim_template(
    server_clock: bool,
    keys: str | None = None,
    per_event: bool = False,
    limits: tuple[bool, bool, bool, bool] = _NO_LIMITS,
) -> Update:
    # Built once per clock kind, circuit filter and limit filter shape: the hot path skips
    # statement construction and its cache-key computation, and the SQL text stays the same
    # for every batch. Without open circuits (keys=None) and without rate limits or pauses
    # (limits=_NO_LIMITS) the claim carries no extra predicate.
    now = _now_param(server_clock, "claim_now")
    circuit = _circuit_filter(
        per_event,
        only=bindparam("claim_only", type_=String()) if keys == "only" else None,
        skip=bindparam("claim_skip", expanding=True, type_=String()) if keys == "skip" else None,
    ) + _limit_filter(limits)
    # The LIMIT is written into the statement (one text per batch size): with it a
    # parameter, PostgreSQL's generic plan guessed 10% of the table and hash-joined a
    # sequential scan; with the number in, the generic plan is the custom one and the
    # prepared statement stops being re-planned on every execution.
    limit = bindparam("claim_limit", type_=Integer(), literal_execute=True)
    candidates = (
        _claimable(now, limit, circuit)
        .cte("claimable")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    worker = bindparam("claim_worker", type_=String())
    token = bindparam("claim_token", type_=Uuid())
    stamp, expires = _lock_stamps(server_clock, "claim")
    return (
        update(RetryItem)
        .where(RetryItem.id == candidates.c.id)
        .values(**_claimed_values(stamp, expires, worker, token))
        .returning(*CLAIM_COLUMNS)
        .execution_options(**_SYNC_OFF)
    )


def claim(
    at: datetime | None,
    worker_id: str,
    token: uuid.UUID,
    batch_size: int,
    *,
    lock_timeout: float,
    skip_keys: Sequence[str] = (),
    only_key: str | None = None,
    per_event_type: bool = False,
    limit_filter: KeyFilter | None = None,
) -> Bound:
    """Claim up to ``batch_size`` due items in priority order, in one round trip.

    Each claimed row is stamped with the statement's time (``locked_at``) and expires
    ``lock_timeout`` seconds later (``lock_expires_at``): stale reclaim goes by the
    holder's expiry, not the reclaimer's timeout.

    Candidates: pending, due, unlocked and not expired, ordered by priority DESC, then
    next_retry_at, then id (served by ``idx_retry_queue_claim``); locked with SKIP LOCKED
    so concurrent workers never get the same row. RETURNING gives the claimed rows (in no
    particular order).

    Circuit breaker: items whose key (see :func:`circuit_key_of_item`) is in ``skip_keys``
    are left alone; ``only_key`` claims that key's items only (a half-open probe).

    Rate limits and pauses (see :mod:`retryqueue.limits`): ``limit_filter`` restricts the
    claim by limit key; None (no limit or pause stored) adds nothing to the statement.
    """
    params: dict[str, Any] = {
        "claim_worker": worker_id,
        "claim_token": token,
        "claim_limit": batch_size,
        **lock_params(at, "claim", lock_timeout),
    }
    keys: str | None = None
    if only_key is not None:
        keys, params["claim_only"] = "only", only_key
    elif skip_keys:
        keys, params["claim_skip"] = "skip", list(skip_keys)
    shape = _NO_LIMITS
    if limit_filter is not None:
        shape = limit_filter.shape
        params.update(limit_filter.params())
    return _claim_template(at is None, keys, per_event_type and keys is not None, shape), params
