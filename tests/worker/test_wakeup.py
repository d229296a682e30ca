"""Idle workers wake on NOTIFY (PostgreSQL) and when a scheduled item falls due."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import RetryQueue
from retryqueue.worker import Job
from tests.worker.conftest import LogRecorder, enqueue, new_worker, running, wait_until

POLL_INTERVAL = 30.0
# Well below POLL_INTERVAL: handled within this means the worker did not wait for the poll.
PROMPTLY = 10.0

pytestmark = pytest.mark.usefixtures("worker_kind")


def idle_waits(logs: LogRecorder) -> list[float]:
    return [float(r.__dict__["wait_s"]) for r in logs.matching("idle for up to")]


@pytest.mark.parametrize("backend", ["postgresql"])
class TestNotify:
    """LISTEN/NOTIFY wakes an idle worker long before its poll interval."""

    def test_item_enqueued_to_an_idle_worker_is_handled_before_the_poll(
        self,
        sessions: sessionmaker[Session],
        server_clock_queue: RetryQueue,
        worker_logs: LogRecorder,
    ) -> None:
        handled = threading.Event()

        def handle(job: Job) -> None:
            handled.set()

        worker = new_worker(
            server_clock_queue,
            sessions,
            {"wake.up": handle},
            poll_interval=POLL_INTERVAL,
            listen=True,
        )
        with running(worker) as handle_run:
            wait_until(lambda: idle_waits(worker_logs), what="worker idle")
            assert idle_waits(worker_logs) == [POLL_INTERVAL]  # asleep for the full poll
            enqueue(sessions, server_clock_queue, "wake.up")
            assert handled.wait(PROMPTLY), "the NOTIFY did not wake the worker"
            handle_run.stop()

    def test_listener_connection_is_not_returned_to_the_pool(
        self,
        sessions: sessionmaker[Session],
        server_clock_queue: RetryQueue,
        worker_logs: LogRecorder,
    ) -> None:
        worker = new_worker(server_clock_queue, sessions, {}, poll_interval=POLL_INTERVAL)
        with running(worker) as handle_run:
            wait_until(lambda: idle_waits(worker_logs), what="worker idle")
            handle_run.stop()
        with sessions() as session:  # a pooled connection must not still be LISTENing
            channels = (
                session.connection()
                .exec_driver_sql("select count(*) from pg_listening_channels()")
                .scalar()
            )
        assert channels == 0


class TestScheduledItems:
    """Without a NOTIFY, a worker sleeps only until the next item is due."""

    def test_future_item_is_picked_up_when_due_not_at_the_poll(
        self,
        sessions: sessionmaker[Session],
        server_clock_queue: RetryQueue,
        worker_logs: LogRecorder,
    ) -> None:
        handled = threading.Event()
        enqueue(sessions, server_clock_queue, "later", delay=1.0)
        worker = new_worker(
            server_clock_queue,
            sessions,
            {"later": lambda job: handled.set()},
            poll_interval=POLL_INTERVAL,
            listen=False,
        )
        with running(worker) as handle_run:
            assert handled.wait(PROMPTLY), "the due item waited for the poll interval"
            handle_run.stop()
        assert idle_waits(worker_logs)[0] < POLL_INTERVAL

    def test_expired_items_do_not_keep_an_idle_worker_awake(
        self,
        sessions: sessionmaker[Session],
        queue: RetryQueue,
        worker_logs: LogRecorder,
    ) -> None:
        from retryqueue import ManualClock

        assert isinstance(queue.clock, ManualClock)
        enqueue(sessions, queue, "stale", ttl=60)
        queue.clock.advance(120)  # due, but expired: acquire will never take it
        worker = new_worker(queue, sessions, {}, poll_interval=POLL_INTERVAL, listen=False)
        with running(worker) as handle_run:
            wait_until(lambda: idle_waits(worker_logs), what="worker idle")
            handle_run.stop()
        assert idle_waits(worker_logs) == [POLL_INTERVAL]
