"""The pipeline: buffered outcomes, prefetched items, and what stop() does with both."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import RetryQueue, RetryStatus
from retryqueue.errors import InvalidArgument
from retryqueue.worker import Job, RunReport, Worker
from tests.worker.conftest import (
    count_status,
    enqueue,
    history,
    item,
    new_worker,
    running,
    statuses,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("worker_kind")


class Gate:
    """A handler that blocks until the test opens the gate, and says when it started."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.started: list[int] = []

    def __call__(self, job: Job) -> None:
        self.started.append(job.id)
        assert self.open.wait(30), "test never opened the gate"


def make_worker(
    queue: RetryQueue, sessions: sessionmaker[Session], handlers: Any, **kw: Any
) -> Worker:
    kw.setdefault("listen", False)
    kw.setdefault("poll_interval", 30)  # no claim after the queue ran dry: nothing flushes early
    return new_worker(queue, sessions, handlers, worker_id="pipeline-test", **kw)


class TestOutcomeBuffer:
    """Finished outcomes wait in the buffer, and stop() records every one before it returns."""

    def test_buffered_outcome_is_recorded_before_stop_returns(
        self, sessions: sessionmaker[Session], server_clock_queue: RetryQueue
    ) -> None:
        queue = server_clock_queue
        gate, quick_done = Gate(), threading.Event()
        [slow_id] = enqueue(sessions, queue, "slow.job", priority=5)
        [quick_id] = enqueue(sessions, queue, "quick.job")
        handlers = {"slow.job": gate, "quick.job": lambda job: quick_done.set()}
        worker = make_worker(queue, sessions, handlers, concurrency=2, flush_age=60)
        try:
            with running(worker) as handle:
                wait_until(lambda: gate.started and quick_done.is_set(), what="both handlers ran")
                # Not a batch, not old, not idle (the slow handler runs): still buffered.
                assert statuses(sessions)[quick_id] is RetryStatus.PROCESSING
                assert history(sessions, quick_id) == []
                worker.stop()
                gate.open.set()
                report = handle.stop()
        finally:
            gate.open.set()
        assert report == RunReport(acquired=2, completed=2)
        assert statuses(sessions) == {
            slow_id: RetryStatus.COMPLETED,
            quick_id: RetryStatus.COMPLETED,
        }
        assert history(sessions, quick_id) == [("completed", 1, "pipeline-test")]
        assert history(sessions, slow_id) == [("completed", 1, "pipeline-test")]

    def test_flush_age_must_be_shorter_than_lock_timeout(
        self, sessions: sessionmaker[Session], server_clock_queue: RetryQueue
    ) -> None:
        with pytest.raises(InvalidArgument, match="flush_age"):
            make_worker(server_clock_queue, sessions, {}, lock_timeout=5, flush_age=5)


class TestPrefetch:
    """Items claimed ahead of the handlers are heartbeated, and released at once on stop()."""

    def test_prefetched_items_are_held_then_released_at_shutdown(
        self, sessions: sessionmaker[Session], server_clock_queue: RetryQueue
    ) -> None:
        queue = server_clock_queue
        gate = Gate()
        ids = enqueue(sessions, queue, "slow.job", 8)
        worker = make_worker(queue, sessions, {"slow.job": gate}, batch_size=2, prefetch=2)
        try:
            with running(worker) as handle:
                # One running, and more than a batch claimed ahead of it.
                wait_until(
                    lambda: gate.started and count_status(sessions, RetryStatus.PROCESSING) >= 4,
                    what="items prefetched while the first handler runs",
                )
                held = count_status(sessions, RetryStatus.PROCESSING)
                assert held <= 1 + 2 + 2  # running + at most batch_size + prefetch ready
                worker.stop()
                wait_until(
                    lambda: count_status(sessions, RetryStatus.PENDING) == len(ids) - 1,
                    what="prefetched items released while the handler still runs",
                )
                gate.open.set()
                report = handle.stop()
        finally:
            gate.open.set()
        assert report == RunReport(acquired=held, completed=1, released=held - 1)
        for item_id in set(ids) - set(gate.started):
            assert history(sessions, item_id) == []  # released, not an attempt

    def test_items_waiting_behind_a_stuck_handler_go_back_to_other_workers(
        self, sessions: sessionmaker[Session], server_clock_queue: RetryQueue
    ) -> None:
        """A handler stuck on a long item must not keep the items claimed behind it (the
        pipeline claims ahead while every handler is busy): after ``ready_timeout`` they
        are given back, uncharged, and this worker claims nothing more until a handler
        frees up, so an idle worker runs them meanwhile."""
        queue = server_clock_queue
        gate, ran_elsewhere = Gate(), threading.Event()
        [stuck] = enqueue(sessions, queue, "slow.job", priority=9)
        waiting = enqueue(sessions, queue, "quick.job", 3)
        elsewhere: list[int] = []

        def quick(job: Job) -> None:
            elsewhere.append(job.id)
            if len(elsewhere) == len(waiting):
                ran_elsewhere.set()

        blocked = make_worker(
            queue,
            sessions,
            {"slow.job": gate, "quick.job": quick},
            batch_size=2,
            prefetch=2,
            ready_timeout=0.3,
        )
        try:
            with running(blocked) as stuck_handle:
                wait_until(lambda: gate.started == [stuck], what="the long item running")
                wait_until(
                    lambda: count_status(sessions, RetryStatus.PENDING) == len(waiting),
                    what="the items behind the stuck handler given back",
                )
                other = new_worker(
                    queue, sessions, {"quick.job": quick}, worker_id="idle-one", listen=False
                )
                with running(other) as other_handle:
                    wait_until(ran_elsewhere.is_set, what="the idle worker running them")
                    other.stop()
                    other_handle.stop()
                assert item(sessions, stuck).locked_by == "pipeline-test"
                blocked.stop()
                gate.open.set()
                report = stuck_handle.stop()
        finally:
            gate.open.set()
        assert sorted(elsewhere) == sorted(waiting)
        assert report.completed == 1 and report.released >= len(waiting)
        for item_id in waiting:
            assert history(sessions, item_id) == [("completed", 1, "idle-one")]
            assert item(sessions, item_id).retry_count == 0

    def test_ready_timeout_must_be_positive(
        self, sessions: sessionmaker[Session], server_clock_queue: RetryQueue
    ) -> None:
        with pytest.raises(InvalidArgument, match="ready_timeout"):
            make_worker(server_clock_queue, sessions, {}, ready_timeout=0)

    def test_heartbeat_renews_prefetched_items(
        self, sessions: sessionmaker[Session], server_clock_queue: RetryQueue
    ) -> None:
        queue = server_clock_queue
        gate = Gate()
        ids = enqueue(sessions, queue, "slow.job", 4)
        worker = make_worker(
            queue,
            sessions,
            {"slow.job": gate},
            batch_size=4,
            lock_timeout=3,
            heartbeat_interval=0.2,
        )
        try:
            with running(worker) as handle:
                wait_until(lambda: gate.started, what="first handler running")
                waiting = [i for i in ids if i not in gate.started]
                first: dict[int, datetime | None] = {
                    i: item(sessions, i).locked_at for i in waiting
                }

                def renewed() -> bool:
                    return all(item(sessions, i).locked_at != first[i] for i in waiting)

                wait_until(renewed, what="the heartbeat renewing unstarted items")
                worker.stop()
                gate.open.set()
                handle.stop()
        finally:
            gate.open.set()
