"""What applications need to unit-test their own code against the queue, without sleeping.

The kit runs the library's real statements on an in-memory SQLite database (or on
PostgreSQL when a test asks for it) and lets time jump with a :class:`ManualClock`.

* pytest fixtures (registered automatically when retryqueue is installed): ``rq_clock``,
  ``rq_queue``, ``rq_session``, ``rq_engine``, ``rq_database_url`` — see
  :mod:`retryqueue.testing.plugin`.
* :func:`drain`: run handlers inline until nothing is due, optionally jumping the clock to
  each next due time, and report what happened to each item.
* :func:`assert_enqueued` / :func:`assert_not_enqueued`: readable assertions on what your
  code put in the queue.
* :mod:`retryqueue.testing.factories`: factory-boy factories with a trait per status.
"""

from __future__ import annotations

import difflib
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from retryqueue import hooks
from retryqueue.clock import ManualClock
from retryqueue.errors import InvalidArgument
from retryqueue.models import RetryStatus
from retryqueue.queue import RetryQueue
from retryqueue.results import ClaimedItem, ItemFilter, ItemSnapshot
from retryqueue.worker import job_for
from retryqueue.worker.failures import plan_failure
from retryqueue.worker.routing import Handler, Router, as_router

__all__ = [
    "DrainReport",
    "DrainedItem",
    "ManualClock",
    "assert_enqueued",
    "assert_not_enqueued",
    "drain",
    "queued_items",
]

_ALL_STATUSES = tuple(RetryStatus)


@dataclass(frozen=True, slots=True)
class DrainedItem:
    """What became of one item during a :func:`drain`.

    ``status`` is its final status, ``attempts`` how many times a handler ran for it during
    the drain, ``error_code`` its last error code.
    """

    item_id: int
    event_type: str
    status: RetryStatus
    attempts: int
    error_code: str | None


@dataclass(frozen=True, slots=True)
class DrainReport:
    """The items a :func:`drain` touched, by id, and how many rounds it took."""

    items: Mapping[int, DrainedItem]
    rounds: int

    def by_status(self, status: RetryStatus | str) -> list[DrainedItem]:
        """The drained items that ended in ``status``; :class:`InvalidArgument` if unknown."""
        wanted = _status(status)
        return [item for item in self.items.values() if item.status is wanted]

    def __getitem__(self, item_id: int) -> DrainedItem:
        return self.items[item_id]


def drain(
    queue: RetryQueue,
    session: Session,
    handlers: Router | Mapping[str, Handler],
    *,
    advance_clock: bool = False,
    worker_id: str = "drain",
    batch_size: int = 100,
    max_rounds: int = 1000,
) -> DrainReport:
    """Run handlers inline, in the caller's session, until nothing is due.

    Outcomes follow the worker's rules (return: completed; :class:`PermanentError`: failed;
    :class:`RetryLater`: retried after its delay, or with ``pause_key=True`` the item's
    plugin paused and the attempt not counted; other exceptions: retried with backoff;
    no handler: failed with ``NO_HANDLER``). With ``advance_clock=True`` the queue's
    :class:`ManualClock` jumps to each next due time, so a whole backoff schedule plays
    out at once; without it, items scheduled for later stay pending.
    """
    clock = queue.clock
    if advance_clock and not isinstance(clock, ManualClock):
        raise TypeError("advance_clock=True needs a RetryQueue(clock=ManualClock(...))")
    router = as_router(handlers)
    attempts: Counter[int] = Counter()
    rounds = 0
    while rounds < max_rounds:
        batch = queue.acquire(session, worker_id, batch_size=batch_size)
        if not batch:
            wait = queue.seconds_until_claimable(session) if advance_clock else None
            if wait is None or wait <= 0:
                break  # nothing left that can still be claimed
            assert isinstance(clock, ManualClock)
            clock.advance(wait)
            continue
        rounds += 1
        for item in batch:
            _attempt(queue, session, router, item, worker_id)
            attempts[item.id] += 1
    return DrainReport(_final_states(queue, session, attempts), rounds)


def _attempt(
    queue: RetryQueue, session: Session, router: Router, item: ClaimedItem, worker_id: str
) -> None:
    route = router.resolve(item.event_type, item.plugin_name)
    error: BaseException | None = None
    started = time.perf_counter()
    if route is not None:
        try:
            job = job_for(
                item,
                lambda: bool(
                    queue.heartbeat(session, worker_id, [item.id], lease_token=item.lease_token)
                ),
            )
            if (hook := hooks.active) is None:
                route.handler(job)
            else:
                with hook.attempt(item):
                    route.handler(job)
        except Exception as exc:
            error = exc
    duration_ms = int((time.perf_counter() - started) * 1000)
    plan = plan_failure(item, route, error, queue.policy)
    if plan is None:
        queue.complete(session, item, duration_ms=duration_ms)
        return
    pause = plan.pause_key if isinstance(plan.pause_key, str) else item.plugin_name
    if plan.pause_key is not False and pause and plan.retry_after is not None:
        queue.pause_item_key(
            session,
            item,
            pause,
            plan.retry_after,
            error_message=plan.message,
            error_code=plan.code,
            duration_ms=duration_ms,
        )
        return
    queue.fail(session, item, duration_ms=duration_ms, **plan.failure_arguments())


def _final_states(
    queue: RetryQueue, session: Session, attempts: Counter[int]
) -> dict[int, DrainedItem]:
    if not attempts:
        return {}
    found = queue.find(session, ItemFilter(statuses=_ALL_STATUSES, ids=list(attempts)))
    return {
        snap.id: DrainedItem(
            snap.id, snap.event_type, snap.status, attempts[snap.id], snap.last_error_code
        )
        for snap in found
    }


def queued_items(session: Session) -> list[ItemSnapshot]:
    """Every item in the queue, oldest first (for assertions and debugging)."""
    from retryqueue import monitoring

    return monitoring.find_items(session, ItemFilter(statuses=_ALL_STATUSES))


def _status(value: RetryStatus | str) -> RetryStatus:
    try:
        return RetryStatus(value)
    except ValueError:
        known = ", ".join(status.value for status in RetryStatus)
        raise InvalidArgument(
            "status", f"unknown status {value!r}; expected one of {known}"
        ) from None


def _matches(snapshot: ItemSnapshot, criteria: Mapping[str, Any]) -> bool:
    for name, wanted in criteria.items():
        actual = getattr(snapshot, name)
        if name == "status":
            wanted = _status(wanted)
        if name == "tags":
            actual, wanted = set(actual), set(wanted)
        if actual != wanted:
            return False
    return True


def _describe(session: Session, items: list[ItemSnapshot]) -> str:
    from retryqueue import monitoring

    if not items:
        return "  (the queue is empty)"
    return "\n".join(
        f"  #{s.id} {s.event_type} status={s.status.value} plugin={s.plugin_name} "
        f"channel={s.channel_name} priority={s.priority} retries={s.retry_count}/"
        f"{s.max_retries} correlation_id={s.correlation_id} "
        f"event_data={monitoring.item_payload(session, s.id)[0]!r}"
        for s in items
    )


# Names people write for an item attribute, and the attribute they mean.
_ALIASES = {
    "plugin": "plugin_name",
    "channel": "channel_name",
    "data": "event_data",
    "payload": "event_data",
    "metadata": "event_metadata",
    "error_code": "last_error_code",
    "retries": "retry_count",
}


def _select(
    session: Session, criteria: Mapping[str, Any]
) -> tuple[list[ItemSnapshot], list[ItemSnapshot]]:
    known = set(ItemSnapshot.__dataclass_fields__) | {"event_data"}
    unknown = sorted(set(criteria) - known)
    if unknown:
        hints = []
        for name in unknown:
            guess = _ALIASES.get(name) or next(
                iter(difflib.get_close_matches(name, known, 1)), None
            )
            hints.append(f"{name} (did you mean {guess}?)" if guess else name)
        raise TypeError(f"unknown item attributes: {', '.join(hints)}")
    everything = queued_items(session)
    data = criteria.get("event_data")
    plain = {k: v for k, v in criteria.items() if k != "event_data"}
    matching = [s for s in everything if _matches(s, plain)]
    if data is not None:
        matching = [s for s in matching if _data_contains(session, s.id, data)]
    return matching, everything


def _data_contains(session: Session, item_id: int, wanted: Mapping[str, Any]) -> bool:
    from retryqueue.models import RetryItem

    item = session.get(RetryItem, item_id)
    data = item.event_data if item is not None else None
    return isinstance(data, Mapping) and all(data.get(k) == v for k, v in wanted.items())


def assert_enqueued(
    session: Session, *, count: int | None = None, **criteria: Any
) -> list[ItemSnapshot]:
    """Assert that items matching ``criteria`` are in the queue; return them.

    Criteria are item attributes (``event_type``, ``plugin_name``, ``channel_name``,
    ``priority``, ``status``, ``correlation_id``, ``tags``, ...); ``event_data`` matches
    when the item's data contains those keys with those values. ``count`` asks for an
    exact number (default: at least one). The failure message lists what is in the queue.
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not this helper's
    matching, everything = _select(session, criteria)
    wanted = ", ".join(f"{k}={v!r}" for k, v in criteria.items())
    if (count is None and not matching) or (count is not None and len(matching) != count):
        expected = f"{count} item(s)" if count is not None else "an item"
        raise AssertionError(
            f"expected {expected} with {wanted}, found {len(matching)}; the queue holds:\n"
            + _describe(session, everything)
        )
    return matching


def assert_not_enqueued(session: Session, **criteria: Any) -> None:
    """Assert that no item matches ``criteria`` (see :func:`assert_enqueued`)."""
    __tracebackhide__ = True
    assert_enqueued(session, count=0, **criteria)
