"""One acquired batch inside a worker: which items wait, run, finished; which leases hold.

Private to the workers (:mod:`retryqueue.worker`, :mod:`retryqueue.worker.async_worker`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from retryqueue.results import ClaimedItem
from retryqueue.worker.routing import Route

__all__ = ["Batch", "BatchState", "Finished", "by_token"]

_FLUSH_AFTER = 0.5  # a finished outcome waits at most this long for its batch-mates
_LONGEST_WAIT = 5.0


@dataclass(slots=True)
class Finished:
    """A handler run that ended (``error`` None: success; ``route`` None: no handler)."""

    item: ClaimedItem
    route: Route | None
    error: BaseException | None
    duration_seconds: float
    finished_at: float = field(default_factory=time.monotonic)

    @property
    def duration_ms(self) -> int:
        """The run's duration in whole milliseconds."""
        return round(self.duration_seconds * 1000)


class BatchState:
    """One acquired batch: items waiting, running and finished; the leases still held.

    Bookkeeping only, with no locking and no waiting: the thread worker guards it with a
    condition (:class:`Batch`), the asyncio worker needs no lock (one event loop thread).
    ``outcomes_due`` holds the rule for when finished runs are recorded.
    """

    def __init__(self, items: list[ClaimedItem]) -> None:
        self.items = items
        self.renewed_at = time.monotonic()
        self._unstarted = deque(items)
        self._running: dict[int, ClaimedItem] = {}
        self._finished: list[Finished] = []
        self._held = {item.id: item for item in items}
        self._lost: set[int] = set()

    def next_item(self, stopping: bool) -> ClaimedItem | None:
        """The next item to run, or None when there is none or the worker is stopping."""
        if stopping or not self._unstarted:
            return None
        item = self._unstarted.popleft()
        self._running[item.id] = item
        return item

    def finish(self, done: Finished) -> None:
        """Note a handler run that ended."""
        self._running.pop(done.item.id, None)
        self._finished.append(done)

    def take_unstarted(self) -> list[ClaimedItem]:
        """Remove and return the items no handler has started."""
        items = list(self._unstarted)
        self._unstarted.clear()
        return items

    def outcomes_due(self, stopping: bool, deadline: float | None) -> list[Finished] | float:
        """Finished runs to record now (a list, maybe empty: stop waiting), or how long to wait.

        A finished run waits up to _FLUSH_AFTER for batch-mates, so that a batch's outcomes
        share one transaction. The list comes back early when all runs ended, at the
        deadline, or when a stop was requested and no deadline is set yet; once a deadline
        is set (shutting down), outcomes are recorded without delay.
        """
        hurry = deadline is not None
        now = time.monotonic()
        idle = not self._unstarted and not self._running
        oldest = self._finished[0].finished_at if self._finished else None
        if oldest is not None and (hurry or idle or now - oldest >= _FLUSH_AFTER):
            taken, self._finished = self._finished, []
            return taken
        if idle or (stopping and not hurry):
            return []
        if deadline is not None and now >= deadline:
            return []
        timeout = _LONGEST_WAIT
        if oldest is not None:
            timeout = min(timeout, oldest + _FLUSH_AFTER - now)
        if deadline is not None:
            timeout = min(timeout, deadline - now)
        return max(timeout, 0.001)

    def done(self) -> bool:
        """True when every item was recorded, released or abandoned."""
        return not (self._unstarted or self._running or self._finished)

    def has_finished(self) -> bool:
        """True when some run ended and is not recorded yet."""
        return bool(self._finished)

    def abandon_running(self) -> list[ClaimedItem]:
        """Give up on the running handlers; returns their items (no more heartbeats)."""
        items = list(self._running.values())
        self._running.clear()
        self.forget(item.id for item in items)
        return items

    def forget(self, ids: Iterable[int]) -> None:
        """Stop heartbeating these items."""
        for item_id in ids:
            self._held.pop(item_id, None)

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


class Batch(BatchState):
    """A :class:`BatchState` shared by handler threads and the worker's thread.

    The item lists are guarded by an internal condition; ``held``, ``renewed_at`` and the
    lost set by ``db_lock``, which also serialises this batch's writes (heartbeat, outcome,
    release) so that a heartbeat never mistakes a just-recorded item for a lost one.
    """

    def __init__(self, items: list[ClaimedItem]) -> None:
        super().__init__(items)
        self.db_lock = threading.Lock()
        self._cond = threading.Condition()

    def next_item(self, stopping: bool) -> ClaimedItem | None:
        with self._cond:
            return super().next_item(stopping)

    def finish(self, done: Finished) -> None:
        with self._cond:
            super().finish(done)
            self._cond.notify_all()

    def poke(self) -> None:
        """Wake :meth:`wait_for_outcomes` (the worker is stopping)."""
        with self._cond:
            self._cond.notify_all()

    def take_unstarted(self) -> list[ClaimedItem]:
        with self._cond:
            return super().take_unstarted()

    def wait_for_outcomes(
        self, stopping: threading.Event, deadline: float | None
    ) -> list[Finished]:
        """Block until :meth:`outcomes_due` gives finished runs (or says stop waiting)."""
        with self._cond:
            while isinstance(due := self.outcomes_due(stopping.is_set(), deadline), float):
                self._cond.wait(due)
            return due

    def done(self) -> bool:
        with self._cond:
            return super().done()

    def has_finished(self) -> bool:
        with self._cond:
            return super().has_finished()

    def abandon_running(self) -> list[ClaimedItem]:
        """Give up on the running handlers (caller holds db_lock); returns their items."""
        with self._cond:
            return super().abandon_running()


def by_token(items: Iterable[ClaimedItem]) -> dict[Any, list[int]]:
    """Item ids grouped by lease token (one heartbeat/release statement per token)."""
    groups: dict[Any, list[int]] = {}
    for item in items:
        groups.setdefault(item.lease_token, []).append(item.id)
    return groups
