"""The worker's pipeline: a local buffer of claimed items, the handlers' queue, and the
outcome buffer with its flush rules. Shared, as it is, by the thread worker and the asyncio
worker; bookkeeping only (no locking, no waiting, no database).

A worker keeps up to ``batch_size + prefetch`` claimed, unstarted items (``ready``) so that
handlers never wait for a claim, and a buffer of finished runs (``finished``) that is
recorded in one transaction, together with the next claim when more work is wanted. The
rules live in :meth:`Pipeline.next_step`:

- claim ``batch_size`` more when no more than ``prefetch`` items are ready (never while
  stopping, never in ``run_once`` after its one batch, not before ``claim_at`` after an
  empty claim unless a NOTIFY woke the worker);
- flush the buffered outcomes when they make a batch, when the oldest is ``flush_age``
  seconds old, when the handlers have nothing left to run (idle), when stopping, or
  whenever a claim goes out anyway (one transaction for both);
- give back (release to pending, no attempt spent) ready items that waited
  ``ready_timeout`` seconds for a handler, and claim nothing more until a handler
  finishes: a handler stuck on a long item must not hold other items away from idle
  workers (without this a worker whose handlers are all busy keeps its prefetched items,
  heartbeated, for as long as the long item runs).

Up to ``depth`` pipeline transactions may run at once (on PostgreSQL two by default: while
one is at the server, the worker turns the other's results into work, so the database and
the worker's own CPU time overlap instead of taking turns). The items their claims may
bring count against the prefetch bound, so the worker never holds more than
``batch_size + prefetch`` unstarted items. A lease renewal (heartbeat) waits until no
pipeline transaction runs and keeps new ones out while it runs (``renewing``): the two never
write the same rows at the same time, and a renewal never mistakes an item being recorded
for a lost lease.

Heartbeats cover every item held: ready (prefetched), running, and finished but not yet
recorded.
"""

from __future__ import annotations

import enum
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from retryqueue.results import ClaimedItem
from retryqueue.worker._batch import Finished

__all__ = ["GiveBack", "Governor", "Pipeline", "Step", "Wait"]


@dataclass(frozen=True, slots=True)
class Step:
    """One transaction to run now: record ``outcomes``, then claim ``claim`` items."""

    outcomes: list[Finished] = field(default_factory=list)
    claim: int = 0


@dataclass(frozen=True, slots=True)
class GiveBack:
    """Release these ready items now: they waited ``ready_timeout`` for a handler
    (``why`` "overdue"), or a claim that was running at shutdown brought them ("unstarted")."""

    items: list[ClaimedItem]
    why: str = "overdue"


class Wait(enum.Enum):
    """What the driver does when there is no transaction to run."""

    DONE = "done"  # nothing held, nothing will be claimed: the drive is over
    ABANDON = "abandon"  # the shutdown grace ran out with handlers still running


class Governor:
    """How many pipeline transactions may run at once right now, between 1 and ``depth``:
    more than one only while the worker gets through its work faster that way.

    A second transaction in flight lets the worker turn one's results into work while the
    other is at the server; on a database that is already busy (many workers, few cores)
    it only queues behind the first and adds lock contention. So the governor measures
    what each setting delivers: how fast transactions land, while claims come back full
    (a queue that runs dry measures its producers, not the worker). Every :attr:`WINDOW`
    landings it allows ``depth`` unless one at a time landed more than :attr:`MARGIN`
    times as fast. A window starts with a few transactions run the other way
    (:attr:`PROBES`), so both rates stay current: every window while the two are close,
    every :attr:`CLEAR_EVERY` windows while one is ahead by more than :attr:`CLEAR` (a
    probe of the slower setting costs throughput). The first landing of each phase starts
    its clock (it was launched under the other setting).

    An earlier governor compared the round trip of a lone transaction with that of one
    overlapping another. That misjudged a worker whose driver threads take turns at the
    handlers: an overlapped round trip also waits for the other thread's Python, so it
    looked slow while two at once drained about a third faster.
    """

    WINDOW = 64
    PROBES = 8
    MARGIN = 1.1
    CLEAR = 1.3
    CLEAR_EVERY = 4
    SMOOTHING = 0.3

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.chosen = depth  # the decision of the last window
        self.rates: dict[int, float] = {}  # smoothed landings per second, by setting
        self.every = 1  # probe at the start of every how many windows
        self._landings = 0
        self._phase_first: float | None = None  # when this phase's first landing came
        self._phase_landings = 0
        self._phase_flowing = True  # every claim of this phase came back full

    def allowed(self) -> int:
        """Transactions that may run at once now (a probe runs the other way)."""
        window, position = divmod(self._landings, self.WINDOW)
        if self.depth == 1 or position >= self.PROBES or window % self.every:
            return self.chosen
        return 1 if self.chosen > 1 else self.depth

    def note(self, now: float, flowing: bool) -> None:
        """A transaction landed at ``now`` (monotonic seconds); ``flowing``: claims come
        back full (the worker has more work than it gets through)."""
        setting = self.allowed()
        self._landings += 1
        if self._phase_first is None:
            self._phase_first = now
        else:
            self._phase_landings += 1
        self._phase_flowing = self._phase_flowing and flowing
        position = self._landings % self.WINDOW
        if position not in (0, self.PROBES):
            return
        elapsed = now - self._phase_first
        if self._phase_flowing and self._phase_landings and elapsed > 0:
            rate = self._phase_landings / elapsed
            self.rates[setting] = _smooth(self.rates.get(setting), rate, self.SMOOTHING)
        self._phase_first, self._phase_landings, self._phase_flowing = None, 0, True
        one, many = self.rates.get(1), self.rates.get(self.depth)
        if position == 0 and one is not None and many is not None:
            self.chosen = 1 if one > self.MARGIN * many else self.depth
            self.every = self.CLEAR_EVERY if max(one, many) > self.CLEAR * min(one, many) else 1


def _smooth(average: float | None, value: float, weight: float) -> float:
    return value if average is None else average + weight * (value - average)


class Pipeline:
    """The items a worker holds and the outcomes it has not recorded; see the module docs."""

    def __init__(
        self,
        batch_size: int,
        prefetch: int,
        flush_age: float,
        ready_timeout: float,
        depth: int = 1,
        adaptive: bool = False,
    ) -> None:
        self.batch_size = batch_size
        self.depth = depth  # pipeline transactions that may run at once (at most)
        # adaptive: fewer while a second one does not pay (see Governor)
        self.governor = Governor(depth) if adaptive and depth > 1 else None
        self._flights: dict[int, int] = {}  # its claim, by id() of the step, while it runs
        self._coming = 0  # the sum of the flights' claims (asked for every item taken)
        self.renewing = False  # a lease renewal waits for (or runs): no new transaction
        # claims side by side: a claim alone may go out while another is in flight (the
        # thread worker's drivers taking turns at the handlers: each claims the batch of
        # its next turn while the other's transaction is at the server), while claims
        # flow: after a full one, not after a short one (an idle queue, woken by a NOTIFY,
        # costs one claim, not one per driver)
        self.side_by_side = False
        self.flowing = False
        self.prefetch = prefetch
        self.flush_age = flush_age
        self.ready_timeout = ready_timeout
        self.starved = False  # items were given back: claim again once a handler finishes
        self.claiming = True  # False: claim nothing more (run_once's batch is in)
        self.closed = False  # the drive is over: handlers leave
        self.claim_at = 0.0  # after an empty claim: the next one not before (monotonic)
        self.pause_until = 0.0  # after a failed transaction: back off until then
        self.renewed_at = time.monotonic()
        self._ready: deque[tuple[ClaimedItem, float]] = deque()  # (item, since: monotonic)
        self._running: dict[int, ClaimedItem] = {}
        self._finished: list[Finished] = []
        self._held: dict[int, ClaimedItem] = {}
        self._lost: set[int] = set()

    # -- items coming in and going out ---------------------------------------------------

    def add(self, items: Iterable[ClaimedItem]) -> None:
        """Claimed items join the ready queue (and are heartbeated from now on)."""
        since = time.monotonic()
        for item in items:
            self._ready.append((item, since))
            self._held[item.id] = item

    def next_item(self, stopping: bool) -> ClaimedItem | None:
        """The next item to run, or None when none is ready or the worker is stopping."""
        if stopping or not self._ready:
            return None
        item, _ = self._ready.popleft()
        self._running[item.id] = item
        return item

    def has_ready(self) -> bool:
        """True when an item is ready for a handler."""
        return bool(self._ready)

    def claim_opened(self) -> bool:
        """After :meth:`next_item`: True when taking that item is what allows the next
        claim (the items ready or coming just fell to ``prefetch``): wake a driver."""
        return len(self._ready) + self.claims_in_flight == self.prefetch

    def finish(self, done: Finished) -> bool:
        """Note a handler run that ended; its outcome waits in the buffer. True when a
        driver may act on it now (the first outcome buffered, a batch's worth, nothing
        left to run, or the end of a give-back's pause): only then is a driver woken, not
        after every item."""
        self._running.pop(done.item.id, None)
        self._finished.append(done)
        starved, self.starved = self.starved, False
        buffered = len(self._finished)
        return (
            starved
            or buffered == 1
            or buffered >= self.batch_size
            or not (self._ready or self._running)
        )

    def requeue_outcomes(self, finished: list[Finished]) -> None:
        """Put back outcomes whose transaction failed (first in line for the next flush)."""
        self._finished[:0] = finished

    def take_unstarted(self) -> list[ClaimedItem]:
        """Remove and return the ready items no handler has started (to release them)."""
        items = [item for item, _ in self._ready]
        self._ready.clear()
        return items

    def take_overdue(self, now: float) -> list[ClaimedItem]:
        """Remove and return the ready items that waited ``ready_timeout`` for a handler;
        claim nothing more until a handler finishes."""
        overdue: list[ClaimedItem] = []
        while self._ready and now - self._ready[0][1] >= self.ready_timeout:
            overdue.append(self._ready.popleft()[0])
        if overdue:
            self.starved = True
        return overdue

    def abandon_running(self) -> list[ClaimedItem]:
        """Give up on the running handlers; returns their items (no more heartbeats)."""
        items = list(self._running.values())
        self._running.clear()
        self.forget(item.id for item in items)
        return items

    # -- transactions in flight ----------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Pipeline transactions running now."""
        return len(self._flights)

    @property
    def claims_in_flight(self) -> int:
        """The items the claims of the transactions running now may bring."""
        return self._coming

    def launch(self, step: Step) -> None:
        """A pipeline transaction starts (the driver runs it elsewhere)."""
        self._flights[id(step)] = step.claim
        self._coming += step.claim

    def landed(self, step: Step) -> None:
        """A pipeline transaction ended (its results, if any, already taken in)."""
        self._coming -= self._flights.pop(id(step))
        if self.governor is not None:
            self.governor.note(time.monotonic(), self.flowing)

    def room(self) -> int:
        """Transactions that may run at once now: ``depth``, or fewer (see Governor)."""
        return self.depth if self.governor is None else self.governor.allowed()

    def claim_landed(self, asked: int, got: int) -> bool:
        """A claim of ``asked`` items brought ``got``. True when it came back short (the
        queue ran dry): claim nothing more until :meth:`claim_at` is set from the next due
        time (or a NOTIFY resets it), and claims go out one at a time until one comes back
        full again (``flowing``)."""
        if got < asked:
            self.claim_at = math.inf
            self.flowing = False
            return True
        if asked:
            self.flowing = True
        return False

    def quiet(self) -> bool:
        """True when no pipeline transaction runs (a lease renewal may start)."""
        return self.in_flight == 0

    # -- the flush rules -----------------------------------------------------------------

    def claim_size(self, now: float, stopping: bool) -> int:
        """How many items to claim now (0: none)."""
        if stopping or not self.claiming or self.starved or now < self.claim_at:
            return 0
        coming = len(self._ready) + self.claims_in_flight
        return self.batch_size if coming <= self.prefetch else 0

    def next_step(
        self, now: float, stopping: bool, deadline: float | None
    ) -> Step | GiveBack | Wait | float | None:
        """The next transaction, a :class:`Wait` verdict, or seconds to wait (None: until
        something changes)."""
        idle = not self._ready and not self._running
        if (stopping or not self.claiming) and idle and not self._finished and not self.in_flight:
            return Wait.DONE
        if stopping and self._ready:  # a claim running at shutdown brought them
            return GiveBack(self.take_unstarted(), "unstarted")
        if now < self.pause_until:
            return self.pause_until - now
        if not stopping and (overdue := self.take_overdue(now)):
            return GiveBack(overdue)
        if self.in_flight >= self.room() or self.renewing:  # no room: wait for one to land
            if stopping and deadline is not None and now >= deadline and not self.in_flight:
                return Wait.ABANDON
            return self._until_overdue(now, _until(deadline, now))
        wait = self._wait(now, stopping, deadline, idle)
        if isinstance(wait, Step | Wait):
            return wait
        return self._until_overdue(now, wait)

    def _until_overdue(self, now: float, wait: float | None) -> float | None:
        """``wait``, or less if the oldest ready item comes due for a give-back sooner."""
        if not self._ready:
            return wait
        until_overdue = self._ready[0][1] + self.ready_timeout - now
        return until_overdue if wait is None else min(wait, until_overdue)

    def _wait(
        self, now: float, stopping: bool, deadline: float | None, idle: bool
    ) -> Step | Wait | float | None:
        claim = self.claim_size(now, stopping)
        side_by_side = self.side_by_side and self.flowing
        if claim and self.claims_in_flight and not self._finished and not side_by_side:
            claim = 0  # a claim alone waits for the one in flight to say if there is more
        if self._finished:
            oldest = self._finished[0].finished_at
            if (
                claim
                or stopping
                or idle
                or len(self._finished) >= self.batch_size
                or now - oldest >= self.flush_age
            ):
                taken, self._finished = self._finished, []
                return Step(taken, claim)
            return max(oldest + self.flush_age - now, 0.0005)
        if claim:
            return Step([], claim)
        if stopping or not self.claiming:
            if deadline is not None and now >= deadline and not self.in_flight:
                return Wait.ABANDON
            return _until(deadline, now)
        if self.claim_at > now and len(self._ready) <= self.prefetch:
            return None if math.isinf(self.claim_at) else self.claim_at - now
        return None

    def empty(self) -> bool:
        """True when no item is ready, running or waiting for its outcome to be recorded."""
        return not (self._ready or self._running or self._finished)

    # -- leases ----------------------------------------------------------------------------

    def forget(self, ids: Iterable[int]) -> None:
        """Stop heartbeating these items (recorded, released or abandoned)."""
        for item_id in ids:
            self._held.pop(item_id, None)
            self._lost.discard(item_id)

    def held_items(self, only: list[int] | None) -> list[ClaimedItem]:
        """Items whose leases we still hold."""
        if only is None:
            return list(self._held.values())
        return [self._held[item_id] for item_id in only if item_id in self._held]

    def mark_lost(self, items: Iterable[ClaimedItem]) -> list[ClaimedItem]:
        """Note lost leases; returns those not noted before."""
        new = [item for item in items if item.id not in self._lost]
        self._lost.update(item.id for item in new)
        return new


def _until(deadline: float | None, now: float) -> float | None:
    """Seconds until ``deadline``; None (until something changes) without one or past it
    (a transaction still in flight: its landing wakes the driver)."""
    return None if deadline is None or deadline <= now else deadline - now
