"""Shutdown: in-flight handlers finish, unstarted items go back at once, signals stop run()."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import RetryQueue, RetryStatus
from retryqueue.worker import Job, RunReport, Worker
from tests.worker.conftest import (
    LogRecorder,
    enqueue,
    history,
    new_worker,
    running,
    statuses,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("worker_kind")


class Gate:
    """Handlers that block until the test opens the gate, and say when they started."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.started: list[int] = []
        self.finished: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, job: Job) -> None:
        with self._lock:
            self.started.append(job.id)
        try:
            assert self.open.wait(30), "test never opened the gate"
        finally:
            with self._lock:
                self.finished.append(job.id)


def make_worker(
    queue: RetryQueue, sessions: sessionmaker[Session], handlers: Any, **kw: Any
) -> Worker:
    kw.setdefault("listen", False)
    kw.setdefault("poll_interval", 0.1)
    return new_worker(queue, sessions, handlers, worker_id="shutdown-test", **kw)


class TestGracefulShutdown:
    """stop() with items in flight."""

    def test_in_flight_finish_and_unstarted_are_pending_again_at_once(
        self, sessions: sessionmaker[Session], server_clock_queue: RetryQueue
    ) -> None:
        queue = server_clock_queue
        gate = Gate()
        ids = enqueue(sessions, queue, "slow.job", 6)
        worker = make_worker(queue, sessions, {"slow.job": gate}, batch_size=6, concurrency=2)
        try:
            with running(worker) as handle:
                wait_until(lambda: len(gate.started) == 2, what="two handlers running")
                worker.stop()
                unstarted = set(ids) - set(gate.started)

                def released() -> bool:
                    now = statuses(sessions)
                    return all(now[i] is RetryStatus.PENDING for i in unstarted)

                # While the two handlers are still blocked, the four others are pending.
                wait_until(released, what="unstarted items released")
                now = statuses(sessions)
                assert all(now[i] is RetryStatus.PROCESSING for i in gate.started)
                assert gate.finished == []
                gate.open.set()
                report = handle.stop()
        finally:
            gate.open.set()
        assert report == RunReport(acquired=6, completed=2, released=4)
        assert sorted(gate.started) == sorted(set(ids) - unstarted)
        final = statuses(sessions)
        assert {i for i in ids if final[i] is RetryStatus.COMPLETED} == set(gate.started)
        for item_id in unstarted:
            assert history(sessions, item_id) == []  # released, not an attempt
        with sessions() as session:
            assert {queue.get(session, i).retry_count for i in unstarted} == {0}

    def test_handlers_past_the_grace_are_abandoned_to_lock_expiry(
        self, sessions: sessionmaker[Session], server_clock_queue: RetryQueue
    ) -> None:
        gate = Gate()
        [item_id] = enqueue(sessions, server_clock_queue, "stuck.job")
        worker = make_worker(server_clock_queue, sessions, {"stuck.job": gate}, shutdown_grace=0.2)
        try:
            with running(worker) as handle:
                wait_until(lambda: gate.started, what="handler running")
                report = handle.stop()
            assert report == RunReport(acquired=1, abandoned=1)
            # Not released: the handler may still be working, so only expiry frees it.
            assert statuses(sessions)[item_id] is RetryStatus.PROCESSING
        finally:
            gate.open.set()
            wait_until(lambda: gate.finished, what="abandoned handler to return")

    def test_stop_before_run_acquires_nothing(
        self, sessions: sessionmaker[Session], server_clock_queue: RetryQueue
    ) -> None:
        [item_id] = enqueue(sessions, server_clock_queue, "x")
        worker = make_worker(server_clock_queue, sessions, {"x": lambda job: None})
        worker.stop()
        assert worker.run() == RunReport()
        assert statuses(sessions)[item_id] is RetryStatus.PENDING


@pytest.mark.parametrize("backend", ["sqlite"])
class TestSignals:
    """SIGTERM/SIGINT stop a worker started with install_signals=True."""

    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
    def test_signal_stops_run_and_handlers_are_restored(
        self,
        sessions: sessionmaker[Session],
        server_clock_queue: RetryQueue,
        worker_logs: LogRecorder,
        signum: signal.Signals,
    ) -> None:
        before = signal.getsignal(signum)
        worker = make_worker(server_clock_queue, sessions, {}, poll_interval=30)

        def send_when_idle() -> None:
            wait_until(lambda: worker_logs.matching("idle for up to"), what="worker idle")
            os.kill(os.getpid(), signum)

        sender = threading.Thread(target=send_when_idle, daemon=True)
        sender.start()
        report = worker.run(install_signals=True)  # the main thread, as in a real process
        sender.join(10)
        assert report == RunReport()
        assert worker.stopping
        assert worker_logs.matching(f"{signum.name} received")
        assert signal.getsignal(signum) is before
