"""Backoff and retry decisions, in pure Python: no database, no clock, no imports from the package.

The queue and the worker persist what :meth:`RetryPolicy.decide` returns; they never
reimplement the rule. The documented schedule for ``retry_delay_seconds=60`` and
``backoff_multiplier=2`` is 60 s, 120 s, 240 s, 480 s: the first failure waits
``delay * multiplier**0``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

__all__ = [
    "DEADLINE_REACHED",
    "EXPIRED",
    "EXPIRED_UNRUN",
    "MAX_DELAY_SECONDS",
    "RETRY_PAST_DEADLINE",
    "RETRY_PAST_EXPIRY",
    "Decision",
    "Outcome",
    "RetryPolicy",
    "backoff_delay",
    "calculate_next_retry",
    "within_deadline",
]

MAX_DELAY_SECONDS = 10 * 365 * 24 * 3600.0
"""The longest wait before a retry, 10 years: the backoff is capped there and a longer
``retry_after`` (or any other duration argument) is refused, so that every due time fits
in a timestamp on every backend."""
_LONGEST_DELAY_SECONDS = MAX_DELAY_SECONDS

RETRY_PAST_EXPIRY = "the next retry would fall after the item's expiry"
"""The start of the reason recorded when a retry is refused because the item expires first
(distinct from reaching max_retries)."""

RETRY_PAST_DEADLINE = "the retry deadline was reached"
"""The start of the reason recorded when a retry is refused because it would fall after the
item's ``retry_deadline`` (distinct from reaching max_retries and from expiry)."""

EXPIRED = "EXPIRED"
"""The error code of a pending item dead-lettered because it expired before it could run."""

EXPIRED_UNRUN = "dead-lettered: expired before it could run"
"""The message of such an item (its ``expires_at`` says when)."""

DEADLINE_REACHED = "DEADLINE_REACHED"
"""The error code of an item dead-lettered at its retry deadline (the handler's own code is
kept in the message), so that ``stats``, ``alerts`` and triage can count such items."""


def backoff_delay(
    retry_count: int,
    retry_delay_seconds: float,
    backoff_multiplier: float,
    *,
    max_delay: timedelta | None = None,
    jitter: float = 0.0,
    rand: Callable[[], float] = random.random,
) -> timedelta:
    """The wait before the next attempt after ``retry_count`` earlier retries.

    ``delay * multiplier ** retry_count``, capped at ``max_delay``. ``jitter`` in [0, 1]
    spreads the delay uniformly over ``delay * (1 ± jitter)``; the result never exceeds
    ``max_delay`` and is never negative. ``rand`` returns a float in [0, 1) (inject it in
    tests).
    """
    if retry_count < 0:
        raise ValueError("retry_count must be >= 0")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError("jitter must be between 0 and 1")
    try:
        seconds = float(retry_delay_seconds) * math.pow(float(backoff_multiplier), retry_count)
    except OverflowError:
        seconds = _LONGEST_DELAY_SECONDS
    seconds = min(seconds, _LONGEST_DELAY_SECONDS)
    if jitter:
        seconds *= 1.0 + jitter * (2.0 * rand() - 1.0)
    if max_delay is not None:
        seconds = min(seconds, max_delay.total_seconds())
    return timedelta(seconds=max(0.0, seconds))


def calculate_next_retry(
    retry_count: int,
    retry_delay_seconds: float,
    backoff_multiplier: float,
    *,
    now: datetime,
    max_delay: timedelta | None = None,
    jitter: float = 0.0,
) -> datetime:
    """When the next attempt is due: ``now`` plus :func:`backoff_delay`."""
    return now + backoff_delay(
        retry_count,
        retry_delay_seconds,
        backoff_multiplier,
        max_delay=max_delay,
        jitter=jitter,
    )


class Outcome(StrEnum):
    """What became of one attempt; also the ``status`` written to its history row."""

    COMPLETED = "completed"
    RETRY_SCHEDULED = "retry_scheduled"
    DEAD_LETTERED = "dead_lettered"
    FAILED = "failed"
    LOCK_EXPIRED = "lock_expired"
    PAUSED = "paused"
    """The handler paused its key (``RetryLater(..., pause_key=True)``): the item waits for
    the pause's end and the attempt is not counted."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy's verdict on a failed attempt.

    ``status`` is the item's next status name (``pending``, ``dead_letter`` or ``failed``),
    ``retry_count`` its new retry count and ``delay`` the wait before it is due again
    (``None`` unless it is retried). ``reason`` says why a retry was refused when it was
    not for the usual cause (e.g. :data:`RETRY_PAST_DEADLINE`).
    """

    outcome: Outcome
    status: str
    retry_count: int
    delay: timedelta | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How failures are retried: an optional cap on the delay and jitter.

    Per-item settings (``max_retries``, ``retry_delay_seconds``, ``backoff_multiplier``)
    come from the row; this object only adds what the schema has no column for.
    ``retry_for``: a default retry budget, counted from the item's ``created_at``, for
    items enqueued without a deadline of their own (see :func:`within_deadline`).
    Don't use jitter when tests must predict exact due times, unless ``rand`` is fixed.
    """

    max_delay: timedelta | None = None
    jitter: float = 0.0
    rand: Callable[[], float] = field(default=random.random, compare=False, repr=False)
    retry_for: timedelta | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be between 0 and 1")
        if self.max_delay is not None and self.max_delay < timedelta(0):
            raise ValueError("max_delay must not be negative")
        if self.retry_for is not None and not (
            timedelta(0) < self.retry_for <= timedelta(seconds=MAX_DELAY_SECONDS)
        ):
            raise ValueError("retry_for must be positive and at most 10 years")

    def deadline_of(self, deadline: datetime | None, created_at: datetime) -> datetime | None:
        """The deadline that applies to an item: its own, else ``created_at + retry_for``."""
        if deadline is not None or self.retry_for is None:
            return deadline
        return created_at + self.retry_for

    def delay(self, retry_count: int, retry_delay_seconds: float, multiplier: float) -> timedelta:
        """The backoff delay after ``retry_count`` earlier retries, under this policy."""
        return backoff_delay(
            retry_count,
            retry_delay_seconds,
            multiplier,
            max_delay=self.max_delay,
            jitter=self.jitter,
            rand=self.rand,
        )

    def decide(
        self,
        *,
        retry_count: int,
        max_retries: int,
        retry_delay_seconds: float,
        backoff_multiplier: float,
        retryable: bool = True,
        retry_after: timedelta | None = None,
    ) -> Decision:
        """Decide what a failed attempt leads to.

        A non-retryable failure is ``failed`` at once. Otherwise, once ``retry_count`` has
        reached ``max_retries`` the item is dead-lettered; before that it is retried after
        ``retry_after`` if given (a Retry-After style answer, still counting the attempt),
        else after the backoff delay.
        """
        if not retryable:
            return Decision(Outcome.FAILED, "failed", retry_count)
        if retry_count >= max_retries:
            return Decision(Outcome.DEAD_LETTERED, "dead_letter", retry_count)
        if retry_after is not None:
            # The remote side said when to come back: honour it, even past max_delay.
            delay = max(retry_after, timedelta(0))
        else:
            delay = self.delay(retry_count, retry_delay_seconds, backoff_multiplier)
        return Decision(Outcome.RETRY_SCHEDULED, "pending", retry_count + 1, delay)


def within_deadline(
    decision: Decision,
    *,
    now: datetime,
    deadline: datetime | None,
    retry_after_given: bool = False,
) -> Decision:
    """``decision`` bounded by a retry deadline.

    A retry due before the deadline stands. A backoff retry that would fall after it is
    moved up to the deadline when time is left (so a 6-hour budget is really used: the
    last attempt runs at the deadline); with no time left, or when the remote side asked
    for a ``Retry-After`` beyond the deadline (``retry_after_given``: coming back earlier
    would ignore it), the item is dead-lettered with :data:`RETRY_PAST_DEADLINE` as the
    reason and its retry count unchanged. Other decisions pass through.
    """
    if decision.delay is None or deadline is None:
        return decision
    due = now + decision.delay
    if due <= deadline:
        return decision
    if not retry_after_given and now < deadline:
        return Decision(decision.outcome, decision.status, decision.retry_count, deadline - now)
    reason = (
        f"{RETRY_PAST_DEADLINE} (deadline {deadline.isoformat()}, next retry would be due "
        f"{due.isoformat()})"
    )
    return Decision(Outcome.DEAD_LETTERED, "dead_letter", decision.retry_count - 1, reason=reason)
