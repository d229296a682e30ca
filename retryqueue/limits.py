"""Rate limits and pauses per key, shared by every worker (table ``daz_retry_limits``).

A **rate limit** says how fast one destination may be called: ``20`` per second with a
``burst`` of ``40``. It is a token bucket stored in the database: every claim that finds a
limit refills the key's bucket (``rate`` tokens per second, at most ``burst``), takes no
more of the key's items than it has whole tokens, and writes back what is left, under the
bucket row's lock, in the claim's own transaction. So N workers on M hosts together start
at most ``burst + rate * t`` of the key's items in any span of ``t`` seconds. Items held
back stay pending: no attempt is spent, their backoff is unchanged.

A **pause** stops a key's items until a time: a handler that hears "429, Retry-After: 30"
raises ``RetryLater(30, pause_key=True)``, and every worker skips the key until then; the
item that carried the news is rescheduled to the pause's end without spending an attempt
(its history row says ``paused``). An operator can pause or resume a key by hand. A pause
that has ended, or a cleared limit, leaves an inert row (the runtime role needs no DELETE).

Keys are the circuit breaker's: a plugin_name, or ``plugin_name:event_type`` (a key with
a ``:`` is always read as the latter). An item of plugin ``p`` and event type ``e`` obeys
the limit of ``p:e`` if there is one, else that of ``p``; a pause of ``p`` or of ``p:e``
stops it. Items without a plugin are never limited or paused.

Cost: the claim checks whether any limit or pause is in force at most once per
:data:`PRESENCE_TTL` seconds per :class:`LimitPresence` (one per queue object); while it
finds none the claim statement is exactly the one without this feature. A limit or pause
set elsewhere is therefore honoured by a worker within :data:`PRESENCE_TTL` seconds.
With limits stored, a claim costs two small reads, one claim statement per limited key
with tokens and one write per bucket it used.

Functions take the caller's Session and never commit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from retryqueue import statements as sql
from retryqueue import validation as check
from retryqueue._limit_rows import (
    execute,
    existing,
    locked_row,
    only,
    paused_at,
    refilled,
    skipping,
    waiting,
)
from retryqueue.errors import InvalidArgument
from retryqueue.models import CIRCUIT_KEY_LENGTH
from retryqueue.monitoring import fetch_all
from retryqueue.statements import KeyFilter

__all__ = [
    "MAX_BURST",
    "MAX_PAUSE_SECONDS",
    "MAX_RATE",
    "PRESENCE_TTL",
    "KeyLimit",
    "LimitPresence",
    "claim_within_limits",
    "clear_limit",
    "key_limits",
    "pause_key",
    "paused_keys",
    "resume_key",
    "set_limit",
]

logger = logging.getLogger("retryqueue.limits")

PRESENCE_TTL = 1.0
"""Seconds a claim trusts its last look at whether any limit or pause exists."""
MAX_RATE = 1_000_000.0
"""The highest rate accepted, per second."""
MAX_BURST = 1_000_000.0
"""The largest burst accepted."""
MAX_PAUSE_SECONDS = 7 * 24 * 3600.0
"""The longest pause accepted (7 days, the default item TTL): a destination down for
longer wants its circuit opened or its items parked, not a pause."""
REASON_PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class KeyLimit:
    """A key's rate limit and pause, as stored (what ``retryqueue limits`` lists).

    ``rate_per_second``/``burst`` are None for a key that is only paused; ``tokens`` is
    the bucket refilled to ``now`` (None without a limit). ``paused_until`` is None unless
    the key is paused now. ``throttled_claims`` counts the claims that left some of the
    key's due items pending for want of tokens.
    """

    key: str
    rate_per_second: float | None
    burst: float | None
    tokens: float | None
    paused_until: datetime | None
    pause_reason: str | None
    throttled_claims: int
    updated_at: datetime | None


class LimitPresence:
    """Whether ``daz_retry_limits`` has a limit or pause in force, looked up at most every
    ``ttl`` seconds.

    One per :class:`~retryqueue.queue.RetryQueue`; :meth:`invalidate` after a change made
    through it, so that this process sees its own limits and pauses at once.
    """

    def __init__(self, ttl: float = PRESENCE_TTL) -> None:
        self.ttl = check.seconds("ttl", ttl)
        self._known: bool | None = None
        self._checked_at = 0.0

    def active(self, session: Session, at: datetime | None) -> bool:
        """True if a limit or pause may be in force (one cheap SELECT per ``ttl``; ``at``:
        the operation's now, None for the database's clock)."""
        now = time.monotonic()
        if self._known is None or now - self._checked_at >= self.ttl:
            rows = fetch_all(session, sql.any_limit(at), "rate limits")
            self._known, self._checked_at = bool(rows), now
        return self._known

    def invalidate(self) -> None:
        """Look again at the next claim."""
        self._known = None


ClaimRunner = Callable[[KeyFilter | None, int], list[Any]]
"""Runs one claim statement with a limit filter and a batch size; returns the claimed rows
(each with ``plugin_name`` and ``event_type``)."""


def claim_within_limits(
    session: Session, at: datetime | None, batch_size: int, run: ClaimRunner
) -> list[Any]:
    """Claim up to ``batch_size`` items, no more of a limited key than its tokens allow.

    Paused keys' items are skipped. Each limited key's bucket is locked (SKIP LOCKED: a
    bucket another claim holds is skipped this time, not waited for), refilled, and its
    whole tokens claimed with one statement per key; then one statement claims the rest,
    skipping every limited or paused key. The buckets are written back in this
    transaction: tokens left and, for a key whose due items were left pending, one more
    throttled claim.
    """
    rows = fetch_all(session, sql.limits_in_force(at), "rate limits")
    if not rows:
        return run(None, batch_size)
    now = rows[0].now
    paused = {row.limit_key for row in rows if paused_at(row, now)}
    limited = [row.limit_key for row in rows if row.rate_per_second is not None]
    held = paused | set(limited)
    buckets: dict[str, Any] = {}
    if limited:
        locked = sql.limits_by_key(at, limited, lock=True, skip_locked=True)
        buckets = {row.limit_key: row for row in fetch_all(session, locked, "rate limits")}
    grants = {key: math.floor(refilled(row)) for key, row in buckets.items() if key not in paused}
    claimed: list[Any] = []
    taken: dict[str, int] = {}
    for key in sorted(key for key, grant in grants.items() if grant > 0):
        room = batch_size - len(claimed)
        if room <= 0:
            break
        got = run(only(key, paused, held), min(grants[key], room))
        taken[key] = len(got)
        claimed += got
    room = batch_size - len(claimed)
    if room > 0:
        claimed += run(skipping(held), room)
    # A key ran out of tokens if it got all it was granted (perhaps nothing): it was
    # throttled if due items of it are still waiting.
    spent = [key for key, grant in grants.items() if taken.get(key, 0) >= grant]
    throttled = waiting(session, at, spent) if spent else set()
    for key, row in buckets.items():
        used = taken.get(key, 0)
        if used or key in throttled:
            values = {
                "tokens": max(0.0, refilled(row) - used),
                "refilled_at": max(row.now, row.refilled_at or row.now),
                "throttled_claims": row.throttled_claims + (key in throttled),
            }
            execute(session, sql.update_limit(at, key, values), "rate limits")
    return claimed


# -- the operator's side -----------------------------------------------------------------


def set_limit(
    session: Session, at: datetime | None, key: str, rate: float, burst: float | None = None
) -> KeyLimit:
    """Limit ``key`` to ``rate`` items per second with bursts of ``burst`` (default: the
    rate, at least 1). Replaces an earlier limit (the bucket keeps its tokens, up to the new
    burst); a pause stays as it is."""
    key = limit_key(key)
    rate = _positive("rate", rate, MAX_RATE)
    burst = max(1.0, rate) if burst is None else _positive("burst", burst, MAX_BURST)
    if burst < 1:
        raise InvalidArgument("burst", f"must be >= 1 (a whole item), got {burst:g}")
    row = locked_row(session, at, key)
    tokens = burst if row.rate_per_second is None else min(refilled(row), burst)
    values = {
        "rate_per_second": rate,
        "burst": burst,
        "tokens": tokens,
        "refilled_at": row.now,
    }
    execute(session, sql.update_limit(at, key, values), "rate limits")
    logger.info("rate limit %s: %g/s, burst %g", key, rate, burst, extra={"limit_key": key})
    return _read(session, at, key)


def clear_limit(session: Session, at: datetime | None, key: str) -> KeyLimit | None:
    """Remove ``key``'s rate limit; its pause, if any, stays. The key as it is now, or None
    when nothing is left. :class:`InvalidArgument` if the key has no limit."""
    key = limit_key(key)
    row = existing(session, at, key)
    if row is None or row.rate_per_second is None:
        raise InvalidArgument("key", f"{key!r} has no rate limit{_known(session, at)}")
    # The row stays (the runtime role has no DELETE; its throttled count keeps counting up
    # if the key is limited again); a row with no limit and no pause limits nothing.
    values = {"rate_per_second": None, "burst": None, "tokens": 0.0, "refilled_at": None}
    execute(session, sql.update_limit(at, key, values), "rate limits")
    logger.info("rate limit %s cleared", key, extra={"limit_key": key})
    return _read(session, at, key) if paused_at(row, row.now) else None


def pause_key(
    session: Session,
    at: datetime | None,
    key: str,
    *,
    until: datetime | None = None,
    seconds: float | timedelta | None = None,
    reason: str = REASON_PAUSED,
) -> KeyLimit:
    """Pause ``key`` until ``until`` (aware) or for ``seconds``: every worker skips its
    items until then. A pause only ever lengthens: an earlier end than the current one
    leaves it as it is (:func:`resume_key` lifts it). At most :data:`MAX_PAUSE_SECONDS`;
    an end in the past is refused."""
    key = limit_key(key)
    reason = check.text("reason", reason)
    if (until is None) == (seconds is None):
        raise InvalidArgument("until", "give either until or seconds, not both or neither")
    now = at if at is not None else session.execute(sql.database_now(None)).scalar_one()
    if until is not None:
        end = check.aware("until", until)
        wait = (end - now).total_seconds()
        if wait <= 0:
            raise InvalidArgument("until", f"{end.isoformat()} is not in the future")
        if wait > MAX_PAUSE_SECONDS:
            raise InvalidArgument("until", f"is more than {_days(MAX_PAUSE_SECONDS)} away")
    else:
        wait = check.seconds("seconds", seconds, allow_zero=False, maximum=MAX_PAUSE_SECONDS)
        end = now + timedelta(seconds=wait)
    row = locked_row(session, at, key)  # validated: now write
    if row.paused_until is not None and row.paused_until >= end:
        return _read(session, at, key)
    values = {"paused_until": end, "pause_reason": reason[:255]}
    execute(session, sql.update_limit(at, key, values), "rate limits")
    logger.warning(
        "key %s paused until %s (%s)",
        key,
        end.isoformat(),
        reason,
        extra={"limit_key": key, "paused_until": end, "reason": reason},
    )
    return _read(session, at, key)


def resume_key(session: Session, at: datetime | None, key: str) -> KeyLimit | None:
    """Lift ``key``'s pause now. The key as it is now, or None when nothing is left.
    :class:`InvalidArgument` if the key is not paused."""
    key = limit_key(key)
    row = existing(session, at, key)
    if row is None or not paused_at(row, row.now):
        raise InvalidArgument("key", f"{key!r} is not paused{_known(session, at, paused=True)}")
    logger.info("key %s resumed", key, extra={"limit_key": key})
    values = {"paused_until": None, "pause_reason": None}
    execute(session, sql.update_limit(at, key, values), "rate limits")
    return _read(session, at, key) if row.rate_per_second is not None else None


def paused_keys(session: Session, at: datetime | None) -> tuple[KeyFilter | None, float | None]:
    """The filter that skips the keys paused now, and the seconds until the first of
    those pauses ends (None, None: nothing is paused). For an idle worker's wait."""
    rows = [
        row
        for row in fetch_all(session, sql.limits_in_force(at), "rate limits")
        if paused_at(row, row.now)
    ]
    if not rows:
        return None, None
    keys = {row.limit_key for row in rows}
    first = min((row.paused_until - row.now).total_seconds() for row in rows)
    return skipping(keys), first


def key_limits(session: Session, at: datetime | None) -> list[KeyLimit]:
    """Every key with a rate limit or a current pause, by key."""
    rows = fetch_all(session, sql.limits_in_force(at), "rate limits")
    return [
        _limit(row) for row in rows if row.rate_per_second is not None or paused_at(row, row.now)
    ]


def limit_key(key: object) -> str:
    """A valid key: non-blank text of at most 511 characters (``plugin[:event_type]``)."""
    key = check.text("key", key, max_length=CIRCUIT_KEY_LENGTH).strip()
    plugin, colon, event_type = key.partition(":")
    if not plugin or (colon and not event_type):
        raise InvalidArgument("key", f"{key!r}: expected plugin_name or plugin_name:event_type")
    return key


# -- helpers ------------------------------------------------------------------------------


def _positive(field: str, value: object, maximum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(field, f"expected a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise InvalidArgument(field, f"must be a finite number > 0, got {value}")
    if number > maximum:
        raise InvalidArgument(field, f"must be at most {maximum:g}, got {value}")
    return number


def _days(seconds: float) -> str:
    return f"{seconds / 86400:g} days"


def _read(session: Session, at: datetime | None, key: str) -> KeyLimit:
    (row,) = fetch_all(session, sql.limits_by_key(at, [key], lock=False), "rate limits")
    return _limit(row)


def _known(session: Session, at: datetime | None, *, paused: bool = False) -> str:
    rows = key_limits(session, at)
    keys = [
        row.key
        for row in rows
        if (row.paused_until is not None if paused else row.rate_per_second is not None)
    ]
    what = "paused keys" if paused else "limited keys"
    return f" ({what}: {', '.join(keys[:20])})" if keys else f" (no {what})"


def _limit(row: Any) -> KeyLimit:
    limited = row.rate_per_second is not None
    return KeyLimit(
        key=row.limit_key,
        rate_per_second=float(row.rate_per_second) if limited else None,
        burst=float(row.burst) if limited else None,
        tokens=refilled(row) if limited else None,
        paused_until=row.paused_until if paused_at(row, row.now) else None,
        pause_reason=row.pause_reason if paused_at(row, row.now) else None,
        throttled_claims=int(row.throttled_claims),
        updated_at=row.updated_at,
    )
