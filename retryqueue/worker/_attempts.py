"""What a handler receives and what becomes of its attempt: the :class:`Job`, the
:class:`AttemptResult` observers see, the :class:`RunReport` of a run, and the per-item
guards that plan and record an outcome so that nothing one item does can stop its batch.

Shared by both workers (:mod:`retryqueue.worker._base`); the public names are re-exported
by :mod:`retryqueue.worker`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from sqlalchemy.orm import Session

from retryqueue._frozen import builder
from retryqueue.errors import DatabaseError
from retryqueue.policy import RetryPolicy
from retryqueue.queue import RetryQueue
from retryqueue.results import ClaimedItem
from retryqueue.worker._batch import Finished
from retryqueue.worker.failures import FailurePlan, describe, plan_failure

__all__ = [
    "LOG_LEVEL",
    "OUTCOME_ERROR",
    "REPORT_FIELD",
    "AttemptResult",
    "Job",
    "Observer",
    "RunReport",
    "fields_of",
    "health_of",
    "job_for",
    "pause_safely",
    "plan_outcome_safely",
    "record_failure_safely",
]

logger = logging.getLogger("retryqueue.worker")

OUTCOME_ERROR = "OUTCOME_ERROR"
"""The error code of an attempt whose outcome could not be planned or recorded as given
(e.g. a handler exception whose ``__str__`` raises): it is recorded as a retryable failure."""


@dataclass(frozen=True, slots=True)
class Job:
    """What a handler receives: one item's data, read-only, and a way to extend its lease.

    ``attempt`` is 1 for the first run. ``event_data`` and ``metadata`` are read-only views
    (mappings and tuples); copy them to modify. Under the asyncio worker an ``async def``
    handler awaits :meth:`extend_lease_async`; a plain handler (run in a thread) calls
    :meth:`extend_lease` under either worker.
    """

    id: int
    event_id: uuid.UUID
    event_type: str
    event_data: Any
    metadata: Mapping[str, Any]
    channel_name: str | None
    plugin_name: str | None
    correlation_id: str | None
    tags: tuple[str, ...]
    attempt: int
    max_retries: int
    priority: int
    _extend: Callable[[], bool] = field(repr=False, compare=False)
    _extend_async: Callable[[], Any] | None = field(default=None, repr=False, compare=False)

    def extend_lease(self) -> bool:
        """Heartbeat this item now; False if the lease was already lost (stop working on it).

        Raises :class:`~retryqueue.errors.DatabaseError` if the database cannot be reached.
        """
        return self._extend()

    async def extend_lease_async(self) -> bool:
        """:meth:`extend_lease` for ``async def`` handlers of the asyncio worker."""
        if self._extend_async is None:
            return self._extend()
        return bool(await self._extend_async())


@dataclass(frozen=True, slots=True)
class RunReport:
    """What a round (or a whole run) did, counted per outcome.

    ``lost``: outcomes refused because the lease had been taken over. ``released``: items
    given back unstarted at shutdown. ``abandoned``: handlers still running when the
    shutdown grace ran out (their items return after lock_timeout). ``paused``: attempts
    that paused their key (``RetryLater(..., pause_key=True)``), not counted.
    """

    acquired: int = 0
    completed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    failed: int = 0
    lost: int = 0
    released: int = 0
    abandoned: int = 0
    paused: int = 0

    def __add__(self, other: RunReport) -> RunReport:
        return RunReport(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """One attempt, as passed to every observer once its outcome is recorded.

    ``outcome`` is ``completed``, ``retry_scheduled``, ``dead_lettered``, ``failed``,
    ``paused`` (the key was paused; the attempt not counted) or ``lost``.
    """

    item_id: int
    event_type: str
    plugin_name: str | None
    attempt: int
    outcome: str
    duration_seconds: float
    error_code: str | None


Observer = Callable[[AttemptResult], object]

_job = builder(Job)  # Job(...) without its per-field setattr cost (built once per item)
_NO_METADATA: Mapping[str, Any] = MappingProxyType({})

REPORT_FIELD = {
    "completed": "completed",
    "retry_scheduled": "retried",
    "dead_lettered": "dead_lettered",
    "failed": "failed",
    "lost": "lost",
    "paused": "paused",
}
LOG_LEVEL = {
    "completed": logging.INFO,
    "retry_scheduled": logging.WARNING,
    "dead_lettered": logging.ERROR,
    "failed": logging.ERROR,
    "lost": logging.WARNING,
    "paused": logging.WARNING,
}


def job_for(
    item: ClaimedItem,
    extend_lease: Callable[[], bool],
    extend_lease_async: Callable[[], Any] | None = None,
) -> Job:
    """The :class:`Job` a handler receives for a claimed item.

    ``extend_lease`` renews the item's lock and says whether it is still held.
    """
    return _job(  # Job's fields, in order
        item.id,
        item.event_id,
        item.event_type,
        item.event_data,
        item.event_metadata or _NO_METADATA,
        item.channel_name,
        item.plugin_name,
        item.correlation_id,
        item.tags,
        item.attempt,
        item.max_retries,
        item.priority,
        extend_lease,
        extend_lease_async,
    )


def _contained(item: ClaimedItem, message: str, base: RetryPolicy) -> FailurePlan:
    """A retryable failure with backoff, for an outcome that could not be planned as given."""
    decision = base.decide(
        retry_count=item.retry_count,
        max_retries=item.max_retries,
        retry_delay_seconds=item.retry_delay_seconds,
        backoff_multiplier=item.backoff_multiplier,
    )
    return FailurePlan(message[:8000], OUTCOME_ERROR, True, None, None, decision)


def _log_contained(done: Finished, what: str) -> None:
    """Log (with the traceback) an outcome recorded as an ``OUTCOME_ERROR`` failure."""
    logger.error(
        "item %s: its outcome %s; recorded as a failure",
        done.item.id,
        what,
        exc_info=True,
        extra={"item_id": done.item.id, "error_code": OUTCOME_ERROR},
    )


def plan_outcome_safely(done: Finished, base: RetryPolicy) -> FailurePlan | None:
    """The per-item guard of outcome planning: what to record for one finished run.

    :func:`~retryqueue.worker.failures.plan_failure`, except that nothing the item or its
    handler did can make it raise: if planning fails (an exception whose ``__str__`` or
    ``code`` raises, a RetryLater with an impossible delay, ...), the attempt becomes a
    retryable failure with error code ``OUTCOME_ERROR`` and a message saying why, and the
    problem is logged. Siblings in the batch are unaffected.
    """
    try:
        return plan_failure(done.item, done.route, done.error, base)
    except Exception as exc:
        _log_contained(done, "could not be planned")
        what = "none" if done.error is None else type(done.error).__name__
        return _contained(
            done.item,
            f"the outcome of this attempt (error {what}) could not be planned: "
            f"{type(exc).__name__}: {describe(exc)}",
            base,
        )


def record_failure_safely(
    queue: RetryQueue, session: Session, done: Finished, plan: FailurePlan
) -> str:
    """Record one failed attempt as planned; the outcome name (``lost``: lease lost).

    Database errors propagate (the worker retries the whole group). Any other error
    (a value the queue refuses) is contained to this item: it is recorded instead as a
    retryable failure with error code ``OUTCOME_ERROR`` whose message names the problem.
    """
    settings = plan.failure_arguments()
    try:
        outcome = queue.record_failure(session, done.item, duration_ms=done.duration_ms, **settings)
    except DatabaseError:
        raise
    except Exception as exc:
        _log_contained(done, "could not be recorded as planned")
        message = (
            f"the outcome of this attempt could not be recorded ({type(exc).__name__}: "
            f"{describe(exc)}); handler error: {plan.message}"
        )
        outcome = queue.record_failure(
            session,
            done.item,
            error_message=message[:8000],
            error_code=OUTCOME_ERROR,
            duration_ms=done.duration_ms,
        )
    return "lost" if outcome is None else outcome.value


def health_of(
    finished: list[Finished], plans: list[FailurePlan | None], outcomes: dict[int, str]
) -> list[tuple[str | None, str | None, bool]]:
    """What a circuit breaker learns from recorded attempts: successes, and the failures
    that say the downstream is unhealthy (retryable ones; not PermanentError, not a
    missing handler). Refused outcomes (lost leases) say nothing."""
    return [
        (done.item.plugin_name, done.item.event_type, plan is None)
        for done, plan in zip(finished, plans, strict=True)
        if outcomes[done.item.id] not in ("lost", "paused") and (plan is None or plan.retryable)
    ]


def pause_safely(
    queue: RetryQueue, session: Session, done: Finished, plan: FailurePlan, key: str
) -> str:
    """Pause ``key`` for the plan's delay and put the item back uncounted; the outcome name
    (``paused``, or ``lost``: lease lost). A key or value the queue refuses is contained:
    the attempt is recorded as an ordinary failure instead (see
    :func:`record_failure_safely`)."""
    assert plan.retry_after is not None
    try:
        paused = queue.pause_item_key(
            session,
            done.item,
            key,
            plan.retry_after,
            error_message=plan.message,
            error_code=plan.code,
            duration_ms=done.duration_ms,
        )
    except DatabaseError:
        raise
    except Exception:
        logger.error(
            "item %s: key %r could not be paused; recorded as a failure",
            done.item.id,
            key,
            exc_info=True,
            extra={"item_id": done.item.id, "limit_key": key},
        )
        return record_failure_safely(queue, session, done, plan)
    return "paused" if paused else "lost"


def fields_of(item: ClaimedItem, worker_id: str, **more: Any) -> dict[str, Any]:
    """The structured logging fields of one item."""
    return {
        "item_id": item.id,
        "event_type": item.event_type,
        "attempt": item.attempt,
        "plugin_name": item.plugin_name,
        "worker_id": worker_id,
        **more,
    }
