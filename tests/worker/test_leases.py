"""Leases: heartbeats keep slow handlers' items, lost leases are refused, crashes reclaimed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import ManualClock, RetryQueue, RetryStatus
from retryqueue.worker import Job, RunReport
from tests.worker.conftest import (
    LogRecorder,
    count_status,
    enqueue,
    history,
    item,
    new_worker,
    running,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("worker_kind")


class CountingQueue(RetryQueue):
    """A RetryQueue that counts acquire calls (to prove a competitor kept trying)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.acquire_calls = 0

    def acquire(self, *args: Any, **kw: Any) -> Any:
        self.acquire_calls += 1
        return super().acquire(*args, **kw)


class TestHeartbeat:
    """A handler that runs longer than lock_timeout keeps its item."""

    def test_handler_running_three_lock_timeouts_is_never_taken(
        self, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        """The handler's work takes three lock timeouts on the queues' clock, in half-timeout
        steps. After each step the owner's heartbeat must renew the lease before the work
        goes on, and the rival must have tried to reclaim at that time: no real-time margin
        decides the outcome, so a slow machine cannot fail it (nor pass it wrongly)."""
        lock_timeout = 1.0
        owner_queue, rival_queue = RetryQueue(clock=clock), CountingQueue(clock=clock)
        rival_calls: list[int] = []
        started = threading.Event()
        item_ids: list[int] = []

        def renewed_since(stamp: datetime) -> bool:
            locked_at = item(sessions, item_ids[0]).locked_at
            return locked_at is not None and locked_at >= stamp

        def rival_tried(since: int) -> bool:
            return rival_queue.acquire_calls >= since + 2  # one begun after `since` has ended

        def slow(job: Job) -> None:
            started.set()
            for _ in range(6):
                stamp = clock.advance(lock_timeout / 2)
                wait_until(partial(renewed_since, stamp), what="the owner's heartbeat")
                wait_until(partial(rival_tried, rival_queue.acquire_calls), what="the rival")

        item_ids.extend(enqueue(sessions, owner_queue, "slow.report", retry_delay_seconds=0))
        owner = new_worker(
            owner_queue,
            sessions,
            {"slow.report": slow},
            worker_id="owner",
            lock_timeout=lock_timeout,
            heartbeat_interval=0.2,
            listen=False,
        )
        rival = new_worker(
            rival_queue,
            sessions,
            {"slow.report": lambda job: rival_calls.append(job.id)},
            worker_id="rival",
            lock_timeout=lock_timeout,
            poll_interval=0.05,
            listen=False,
        )
        reports: list[RunReport] = []
        owner_thread = threading.Thread(target=lambda: reports.append(owner.run_once()))
        owner_thread.start()
        try:
            assert started.wait(15)
            with running(rival) as rival_run:
                owner_thread.join(60)
                rival_report = rival_run.stop()
        finally:
            owner_thread.join(60)
        assert reports == [RunReport(acquired=1, completed=1)]
        assert rival_calls == [] and rival_report == RunReport()
        assert history(sessions, item_ids[0]) == [("completed", 1, "owner")]


class TestLostLease:
    """A worker whose lease was taken over cannot record an outcome."""

    def test_stale_workers_outcome_is_refused(
        self,
        sessions: sessionmaker[Session],
        queue: RetryQueue,
        clock: ManualClock,
        worker_logs: LogRecorder,
    ) -> None:
        taken_over = threading.Event()
        lease_checks: list[bool] = []

        def stalled(job: Job) -> None:
            lease_checks.append(job.extend_lease())  # still ours
            assert taken_over.wait(15)
            lease_checks.append(job.extend_lease())  # gone
            raise RuntimeError("this failure must not overwrite the new owner's outcome")

        [item_id] = enqueue(sessions, queue, "pay.out", retry_delay_seconds=0)
        # A heartbeat interval far beyond the test: this worker stalls, as after a long GC
        # pause or a network partition.
        stale = new_worker(
            queue,
            sessions,
            {"pay.out": stalled},
            worker_id="stale",
            lock_timeout=60,
            heartbeat_interval=59,
            listen=False,
        )
        result: list[RunReport] = []
        thread = threading.Thread(target=lambda: result.append(stale.run_once()), daemon=True)
        thread.start()
        try:
            wait_until(lambda: lease_checks, what="stale handler started")
            clock.advance(61)  # its lock is now older than lock_timeout
            fresh = new_worker(
                queue,
                sessions,
                {"pay.out": lambda job: None},
                worker_id="fresh",
                lock_timeout=60,
                listen=False,
            )
            assert fresh.run_once() == RunReport(acquired=1, completed=1)
        finally:
            taken_over.set()
            thread.join(15)
        assert result == [RunReport(acquired=1, lost=1)]
        assert lease_checks == [True, False]
        row = item(sessions, item_id)
        assert row.status is RetryStatus.COMPLETED
        assert "must not overwrite" not in (row.error_message or "")
        assert row.last_error_code != "RuntimeError"
        assert history(sessions, item_id) == [
            ("lock_expired", 1, "stale"),
            ("completed", 2, "fresh"),
        ]
        assert worker_logs.matching("lease lost", level=30)


CRASHING_WORKER = textwrap.dedent(
    """
    import asyncio, sys, threading
    from pathlib import Path
    from sqlalchemy.ext.asyncio import async_sessionmaker
    from sqlalchemy.orm import sessionmaker
    from retryqueue import RetryQueue, create_async_engine, create_engine
    from retryqueue.worker.async_worker import AsyncWorker
    from retryqueue.worker import Worker

    url, worker_id, marker, kind = sys.argv[1:5]

    def hang(job):
        Path(marker).touch()
        threading.Event().wait()  # until SIGKILL

    settings = dict(worker_id=worker_id, batch_size=3, lock_timeout=2, heartbeat_interval=0.5,
                    listen=False)
    if kind == "threads":
        Worker(RetryQueue(), sessionmaker(create_engine(url)), {"crash.job": hang},
               **settings).run()
    else:
        sessions = async_sessionmaker(create_async_engine(url))
        asyncio.run(AsyncWorker(RetryQueue(), sessions, {"crash.job": hang}, **settings).run())
    """
)


BUFFERING_WORKER = textwrap.dedent(
    """
    import asyncio, sys, threading
    from pathlib import Path
    from sqlalchemy.ext.asyncio import async_sessionmaker
    from sqlalchemy.orm import sessionmaker
    from retryqueue import RetryQueue, create_async_engine, create_engine
    from retryqueue.worker.async_worker import AsyncWorker
    from retryqueue.worker import Worker

    url, worker_id, marker, kind = sys.argv[1:5]

    def hang(job):
        threading.Event().wait()  # until SIGKILL

    def quick(job):
        Path(marker).touch()

    handlers = {"crash.job": hang, "quick.job": quick}
    # An outcome waits up to 4 s in the buffer while the other handler hangs.
    settings = dict(worker_id=worker_id, concurrency=2, lock_timeout=5, heartbeat_interval=0.5,
                    flush_age=4, poll_interval=30, listen=False)
    if kind == "threads":
        Worker(RetryQueue(), sessionmaker(create_engine(url)), handlers, **settings).run()
    else:
        sessions = async_sessionmaker(create_async_engine(url))
        asyncio.run(AsyncWorker(RetryQueue(), sessions, handlers, **settings).run())
    """
)


def _start_child(engine: Engine, tmp_path: Path, source: str, marker: Path, kind: str) -> Any:
    script = tmp_path / "child_worker.py"
    script.write_text(source)
    url = engine.url.render_as_string(hide_password=False)
    return subprocess.Popen(
        [sys.executable, str(script), url, "doomed-worker", str(marker), kind],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
class TestCrashedWorker:
    """Items of a worker killed with SIGKILL (running, prefetched, or with outcomes still in
    its buffer) are completed by another after lock_timeout."""

    def test_sigkilled_workers_items_are_reclaimed(
        self, engine: Engine, sessions: sessionmaker[Session], tmp_path: Path, worker_kind: str
    ) -> None:
        queue = RetryQueue()
        ids = enqueue(sessions, queue, "crash.job", 6, retry_delay_seconds=0)
        script, marker = tmp_path / "crashing_worker.py", tmp_path / "started"
        script.write_text(CRASHING_WORKER)
        url = engine.url.render_as_string(hide_password=False)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        child = subprocess.Popen(
            [sys.executable, str(script), url, "doomed-worker", str(marker), worker_kind],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_until(marker.exists, timeout=30, what="child worker's handler started")
            # mid-batch, and a batch prefetched beyond it (batch_size 3)
            wait_until(
                lambda: count_status(sessions, RetryStatus.PROCESSING) == 6,
                what="the child holding a running item and prefetched ones",
            )
        finally:
            child.send_signal(signal.SIGKILL)
            _, stderr = child.communicate(timeout=15)
        assert child.returncode == -signal.SIGKILL, stderr.decode()

        done: list[int] = []
        survivor = new_worker(
            queue,
            sessions,
            {"crash.job": lambda job: done.append(job.id)},
            worker_id="survivor",
            lock_timeout=2,
            poll_interval=0.1,
            listen=False,
        )
        with running(survivor) as handle:
            wait_until(
                lambda: count_status(sessions, RetryStatus.COMPLETED) == 6,
                what="survivor completing the reclaimed items",
            )
            handle.stop()
        assert sorted(done) == sorted(ids)
        for item_id in ids:
            assert history(sessions, item_id) == [
                ("lock_expired", 1, "doomed-worker"),
                ("completed", 2, "survivor"),
            ]

    def test_sigkill_with_a_buffered_outcome_runs_it_again_and_completes_it_once(
        self, engine: Engine, sessions: sessionmaker[Session], tmp_path: Path, worker_kind: str
    ) -> None:
        queue = RetryQueue()
        [hung] = enqueue(sessions, queue, "crash.job", retry_delay_seconds=0, priority=5)
        [buffered] = enqueue(sessions, queue, "quick.job", retry_delay_seconds=0)
        marker = tmp_path / "quick-ran"
        child = _start_child(engine, tmp_path, BUFFERING_WORKER, marker, worker_kind)
        try:
            wait_until(marker.exists, timeout=30, what="the quick handler to finish")
            # Its outcome sits in the child's buffer: nothing recorded yet.
            assert item(sessions, buffered).status is RetryStatus.PROCESSING
            assert history(sessions, buffered) == []
        finally:
            child.send_signal(signal.SIGKILL)
            _, stderr = child.communicate(timeout=15)
        assert child.returncode == -signal.SIGKILL, stderr.decode()

        runs: list[int] = []
        survivor = new_worker(
            queue,
            sessions,
            {
                "crash.job": lambda job: runs.append(job.id),
                "quick.job": lambda job: runs.append(job.id),
            },
            worker_id="survivor",
            lock_timeout=5,
            poll_interval=0.1,
            listen=False,
        )
        with running(survivor) as handle:
            wait_until(
                lambda: count_status(sessions, RetryStatus.COMPLETED) == 2,
                what="survivor completing the reclaimed items",
            )
            handle.stop()
        assert sorted(runs) == sorted([hung, buffered])  # at-least-once: it ran again
        for item_id in (hung, buffered):  # and completed once
            assert history(sessions, item_id) == [
                ("lock_expired", 1, "doomed-worker"),
                ("completed", 2, "survivor"),
            ]
