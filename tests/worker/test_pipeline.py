"""The pipeline: buffered outcomes, prefetched items, and what stop() does with both."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import RetryQueue, RetryStatus
from retryqueue.errors import InvalidArgument
from retryqueue.models import RetryHistory
from retryqueue.worker import Job, RunReport, Worker
from tests.support.logs import LogRecorder
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


class _Overlaps:
    """Counts the pipeline's one-statement flushes (PostgreSQL) and lease renewals running
    at once, on every engine (the asyncio worker's too)."""

    def __init__(self) -> None:
        self.active: Counter[str] = Counter()
        self.peak_flushes = 0
        self.renewals = 0
        self.overlaps = 0
        self._lock = threading.Lock()

    @staticmethod
    def kind(statement: str) -> str | None:
        if statement.startswith("WITH done AS"):
            return "flush"
        if statement.startswith("UPDATE daz_retry_queue SET locked_at="):
            return "renewal"
        return None

    def before(self, conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if (kind := self.kind(statement)) is None:
            return
        with self._lock:
            self.active[kind] += 1
            self.renewals += kind == "renewal"
            self.overlaps += bool(self.active["flush"] and self.active["renewal"])
            self.peak_flushes = max(self.peak_flushes, self.active["flush"])

    def after(self, conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if (kind := self.kind(statement)) is not None:
            with self._lock:
                self.active[kind] -= 1

    def __enter__(self) -> _Overlaps:
        event.listen(Engine, "before_cursor_execute", self.before)
        event.listen(Engine, "after_cursor_execute", self.after)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(Engine, "before_cursor_execute", self.before)
        event.remove(Engine, "after_cursor_execute", self.after)


def _drain_watched(
    sessions: sessionmaker[Session], queue: RetryQueue, total: int, **settings: Any
) -> tuple[RunReport, _Overlaps]:
    """Drain ``total`` no-op items with a worker of these settings, counting what ran at
    once; the run's report and the counts."""
    enqueue(sessions, queue, "fast.job", total)
    worker = make_worker(queue, sessions, {"fast.job": lambda job: None}, **settings)
    with _Overlaps() as seen, running(worker) as handle:
        wait_until(
            lambda: count_status(sessions, RetryStatus.COMPLETED) == total,
            what="every item completed",
        )
        return handle.stop(), seen


def _stopped_midway(
    sessions: sessionmaker[Session], queue: RetryQueue, event_type: str
) -> RunReport:
    """Drain 60 items; the 12th handler run calls stop(). The run's report."""
    enqueue(sessions, queue, event_type, 60)
    seen: list[int] = []
    holder: list[Any] = []

    def handler(job: Job) -> None:
        seen.append(job.id)
        if len(seen) == 12:
            holder[0].stop()

    worker = make_worker(queue, sessions, {event_type: handler}, batch_size=4, prefetch=4)
    holder.append(worker)
    with running(worker) as handle:
        wait_until(lambda: worker.stopping, what="a handler stopped the worker")
        return handle.stop()


class TestInFlight:
    """Pipeline transactions run several at once (``in_flight``: two on PostgreSQL by
    default), never more, and never beside a lease renewal."""

    def test_renewals_never_overlap_pipeline_transactions(
        self,
        backend: str,
        sessions: sessionmaker[Session],
        server_clock_queue: RetryQueue,
        worker_logs: LogRecorder,
    ) -> None:
        total = 300
        # A renewal every few ms while batches of 5 are recorded and claimed back to back:
        # a renewal beside a flush would renew items being completed, find them gone, and
        # call their leases lost (or deadlock with it on the rows both write).
        report, seen = _drain_watched(
            sessions, server_clock_queue, total, batch_size=5, heartbeat_interval=0.003
        )
        assert report.completed == total and report.lost == 0
        assert worker_logs.matching("lease lost", logging.WARNING) == []
        assert worker_logs.matching("heartbeat failed", logging.WARNING) == []
        with sessions() as session:
            attempts = session.scalars(
                select(func.count()).select_from(RetryHistory).group_by(RetryHistory.retry_queue_id)
            ).all()
        assert sorted(set(attempts)) == [1]  # each item recorded exactly once
        assert seen.overlaps == 0
        if backend == "postgresql":
            assert seen.renewals > 0  # the check above saw renewals during the drain
            assert seen.peak_flushes <= 2  # the default in_flight on PostgreSQL

    @pytest.mark.parametrize("backend", ["postgresql"])  # the flush counted is PostgreSQL's
    @pytest.mark.parametrize("in_flight", [1, 3])
    def test_never_more_transactions_than_in_flight(
        self,
        in_flight: int,
        sessions: sessionmaker[Session],
        server_clock_queue: RetryQueue,
    ) -> None:
        total = 400
        report, seen = _drain_watched(
            sessions, server_clock_queue, total, batch_size=5, in_flight=in_flight
        )
        assert report.completed == total
        assert 1 <= seen.peak_flushes <= in_flight

    def test_nothing_is_held_after_run_returns(
        self, sessions: sessionmaker[Session], server_clock_queue: RetryQueue
    ) -> None:
        """stop() from inside a handler, with claims in flight: whatever they bring after
        shutdown began is given back, not left locked until lock_timeout."""
        for _ in range(4):  # (items released in a round are claimed again in the next)
            report = _stopped_midway(sessions, server_clock_queue, "midway.job")
            assert count_status(sessions, RetryStatus.PROCESSING) == 0, report
            assert report.acquired == report.completed + report.released

    def test_in_flight_is_validated(
        self, sessions: sessionmaker[Session], server_clock_queue: RetryQueue
    ) -> None:
        with pytest.raises(InvalidArgument, match="in_flight"):
            make_worker(server_clock_queue, sessions, {}, in_flight=0)
