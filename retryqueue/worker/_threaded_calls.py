"""How the thread worker runs its handlers: on handler threads of their own, or, with one
handler at a time and two pipeline transactions in flight, on the drivers themselves,
taking turns (inline turns); and the attempt itself. The base of
:class:`~retryqueue.worker.threaded.Worker`, on its database side
(:mod:`retryqueue.worker._threaded_io`); private (the asyncio worker's counterpart is
:mod:`retryqueue.worker._async_calls`).
"""

from __future__ import annotations

import threading
import time
from functools import partial

from retryqueue import hooks
from retryqueue.results import ClaimedItem
from retryqueue.worker._attempts import job_for
from retryqueue.worker._batch import Finished
from retryqueue.worker._pipeline import Pipeline
from retryqueue.worker._threaded_io import ThreadedIO

__all__ = ["ThreadedCalls"]


class ThreadedCalls(ThreadedIO):
    """The thread worker's handler threads, inline turns and attempts (the attributes
    below are set by :class:`~retryqueue.worker.threaded.Worker`)."""

    _stopping: threading.Event
    _has_work: threading.Condition  # on _lock: idle handler threads wait on it
    _ended: threading.Condition  # on _lock: run's thread waits for drivers on it
    _turn: bool  # inline: a driver is running handlers now
    _drivers: int  # driver threads still running (not counting run's own thread)

    def _inline(self, pipe: Pipeline) -> bool:
        """True when the drivers run the handlers themselves: one handler at a time
        (``concurrency=1``) and room for two pipeline transactions. A driver that finds
        items ready and no handler running takes a turn: it runs up to a batch of them,
        then goes back to recording and claiming while the other driver takes the next
        turn. Each batch then passes from claim to handler to record in one thread, with
        no hand-off to a handler thread and back, and the database works on one driver's
        transaction while the other runs handlers."""
        return self.concurrency == 1 and pipe.depth > 1

    def _await_drivers(self, pipe: Pipeline) -> None:
        """With inline turns: wait until every driver is done, or until the shutdown
        grace ran out (or a driver crashed) and the only driver left is stuck in a
        handler (its item was abandoned; a handler that returns after that records
        nothing)."""
        with self._lock:
            while self._drivers:
                over = pipe.closed or self._crash is not None
                if over and self._drivers <= int(self._turn):
                    return
                self._ended.wait()

    def _handler_loop(self, pipe: Pipeline) -> None:
        """A handler thread: run ready items until the pipeline closes."""
        done: Finished | None = None
        while True:
            with self._lock:
                item = self._handed_over(pipe, done)
                while item is None:
                    if pipe.closed:
                        return
                    self._has_work.wait()
                    item = self._handed_over(pipe, None)
            done = self._attempt(pipe, item)

    def _take_turn(self, pipe: Pipeline) -> None:
        """A driver's turn at the handlers (inline): run up to a batch of ready items,
        then give the turn back. The other driver is woken once, at the end: while the
        turn runs it could rarely get the GIL to act on a wake-up anyway, and each one
        costs both threads a switch."""
        done: Finished | None = None
        try:
            for _ in range(self.batch_size):
                with self._lock:
                    if pipe.closed:  # abandoned while its handler ran: not recorded
                        return
                    if done is not None:
                        pipe.finish(done)
                        done = None
                    item = pipe.next_item(self._stopping.is_set())
                    if item is None:
                        return
                done = self._attempt(pipe, item)
            with self._lock:
                if done is not None and not pipe.closed:
                    pipe.finish(done)
        finally:
            with self._lock:
                self._turn = False
                self._changed.notify_all()

    def _handed_over(self, pipe: Pipeline, done: Finished | None) -> ClaimedItem | None:
        """Buffer the run that ended (``done``) and take the next ready item, if any,
        waking a driver when it may act on either. The caller holds the lock."""
        wake = done is not None and pipe.finish(done)
        item = pipe.next_item(self._stopping.is_set())
        if wake or (item is not None and pipe.claim_opened()):
            self._changed.notify_all()
        return item

    def _attempt(self, pipe: Pipeline, item: ClaimedItem) -> Finished:
        """The one place a handler attempt runs; its exception, if any, is the outcome."""
        route = self.router.resolve(item.event_type, item.plugin_name)
        started = time.monotonic()
        error: BaseException | None = None
        if route is not None:
            try:
                job = job_for(item, partial(self._extend_one, pipe, item.id))
                if (hook := hooks.active) is None:  # instrumentation seam: retryqueue.hooks
                    route.handler(job)
                else:
                    with hook.attempt(item):
                        route.handler(job)
            except BaseException as exc:  # a handler must never kill its thread
                error = exc
        return Finished(item, route, error, time.monotonic() - started)
