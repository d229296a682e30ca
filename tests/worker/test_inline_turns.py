"""The thread worker's inline turns: with one handler at a time (``concurrency=1``) and room
for two pipeline transactions (PostgreSQL), the drivers run the handlers themselves, taking
turns, instead of handing every batch to a handler thread and back.

What must hold: never two handlers at once, every item recorded exactly once, both drivers
taking turns, handler threads where the turns do not apply, and an abandoned handler that
returns after ``run()`` records nothing.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import RetryQueue, RetryStatus
from retryqueue.models import RetryHistory
from retryqueue.worker import Job, RunReport, Worker
from tests.worker.conftest import count_status, enqueue, history, running, statuses, wait_until


class _Watch:
    """A no-op handler that notes the threads it ran on and the most runs at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.threads: set[str] = set()

    def __call__(self, job: Job) -> None:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.threads.add(threading.current_thread().name)
        # Give another thread the chance to run a handler beside this one, were it allowed.
        threading.Event().wait(0.0001)
        with self._lock:
            self.active -= 1


def _drain(
    sessions: sessionmaker[Session], queue: RetryQueue, total: int, **settings: object
) -> tuple[RunReport, _Watch]:
    enqueue(sessions, queue, "fast.job", total)
    watch = _Watch()
    worker = Worker(
        queue, sessions, {"fast.job": watch}, listen=False, worker_id="turns", **settings
    )  # type: ignore[arg-type]
    with running(worker) as handle:
        wait_until(
            lambda: count_status(sessions, RetryStatus.COMPLETED) == total,
            what="every item completed",
        )
        return handle.stop(), watch


def _attempts_per_item(sessions: sessionmaker[Session]) -> set[int]:
    with sessions() as session:
        return set(
            session.scalars(
                select(func.count()).select_from(RetryHistory).group_by(RetryHistory.retry_queue_id)
            ).all()
        )


@pytest.mark.parametrize("backend", ["postgresql"])
class TestTurnsOnPostgreSQL:
    def test_drivers_take_turns_and_never_run_two_handlers_at_once(
        self, sessions: sessionmaker[Session], server_clock_queue: RetryQueue
    ) -> None:
        total = 400
        report, watch = _drain(sessions, server_clock_queue, total, batch_size=5)
        assert report.completed == total and report.lost == 0
        assert watch.peak == 1  # concurrency=1 holds across both drivers
        # The handlers ran on the drivers, both of them, and on no handler thread.
        assert watch.threads == {"retryqueue-driver-0", "retryqueue-driver-1"}
        assert _attempts_per_item(sessions) == {1}

    @pytest.mark.parametrize("settings", [{"concurrency": 2}, {"in_flight": 1}])
    def test_handler_threads_where_turns_do_not_apply(
        self,
        sessions: sessionmaker[Session],
        server_clock_queue: RetryQueue,
        settings: dict[str, int],
    ) -> None:
        report, watch = _drain(sessions, server_clock_queue, 60, batch_size=5, **settings)
        assert report.completed == 60
        assert watch.threads <= {"retryqueue-handler-0", "retryqueue-handler-1"}
        assert watch.peak <= settings.get("concurrency", 1)

    def test_abandoned_handler_returning_late_records_nothing(
        self, sessions: sessionmaker[Session], server_clock_queue: RetryQueue
    ) -> None:
        """The grace runs out while a driver's turn is stuck in a handler: run() returns
        (the item abandoned to lock expiry), and when the handler does return, its
        outcome is not recorded: run() already reported the item as abandoned. The item
        came from a claim that found the queue dry, so the stuck turn is the claiming
        driver's own: it must not go on to ask when the next item is due either."""
        started, release, returned = threading.Event(), threading.Event(), threading.Event()

        def stuck(job: Job) -> None:
            started.set()
            try:
                assert release.wait(30), "test never released the handler"
            finally:
                returned.set()

        run_returned = threading.Event()
        asked_after_run: list[str] = []

        class Watched(Worker):
            def _idle_wait(self) -> float:
                if run_returned.is_set():
                    asked_after_run.append(threading.current_thread().name)
                return super()._idle_wait()

        [item_id] = enqueue(sessions, server_clock_queue, "stuck.job")
        before = set(threading.enumerate())  # threads other tests may have left behind
        worker = Watched(
            server_clock_queue,
            sessions,
            {"stuck.job": stuck},
            listen=False,
            shutdown_grace=0.2,
            worker_id="turns",
        )
        try:
            with running(worker) as handle:
                wait_until(started.is_set, what="the handler running on a driver")
                report = handle.stop()
                run_returned.set()
            assert report == RunReport(acquired=1, abandoned=1)
        finally:
            release.set()
        wait_until(returned.is_set, what="the abandoned handler to return")
        wait_until(
            lambda: (
                not any(
                    thread.name.startswith("retryqueue-")
                    for thread in set(threading.enumerate()) - before
                )
            ),
            what="the worker's threads to end",
        )
        assert statuses(sessions)[item_id] is RetryStatus.PROCESSING
        assert history(sessions, item_id) == []
        assert asked_after_run == []  # no query on the caller's engine once run() returned


@pytest.mark.parametrize("backend", ["sqlite"])
def test_one_transaction_at_a_time_keeps_a_handler_thread(
    sessions: sessionmaker[Session], server_clock_queue: RetryQueue
) -> None:
    """SQLite runs one pipeline transaction at a time: a driver running handlers would
    leave nothing to claim ahead, so a handler thread runs them."""
    report, watch = _drain(sessions, server_clock_queue, 30, batch_size=5)
    assert report.completed == 30
    assert watch.threads == {"retryqueue-handler-0"}


@pytest.mark.parametrize("backend", ["postgresql"])
def test_the_claimer_runs_a_short_claims_items_before_asking_when_the_next_is_due(
    sessions: sessionmaker[Session], server_clock_queue: RetryQueue
) -> None:
    """A claim that comes back short (the queue ran dry) is followed by a query for the
    next due time. The items it brought must not wait behind that query (an idle queue's
    enqueue-to-start latency): the claiming driver runs them at once, on its own turn, and
    asks after. Handing them to the other driver would make them wait until the query
    released the GIL. The query is also held up here: the item still runs and is
    recorded (by the other driver) while it waits."""
    asking, may_answer = threading.Event(), threading.Event()
    started = threading.Event()
    seen: dict[str, object] = {}

    class SlowToAnswer(Worker):
        def _idle_wait(self) -> float:
            if not asking.is_set():
                seen.update(asker=threading.current_thread().name, ran=started.is_set())
                asking.set()
            assert may_answer.wait(30), "test never let the idle wait answer"
            return super()._idle_wait()

    def handler(job: Job) -> None:
        seen["runner"] = threading.current_thread().name
        started.set()

    [item_id] = enqueue(sessions, server_clock_queue, "one.job")
    worker = SlowToAnswer(
        server_clock_queue, sessions, {"one.job": handler}, listen=False, worker_id="turns"
    )
    try:
        with running(worker) as handle:
            wait_until(asking.is_set, what="the claimer asking when the next item is due")
            assert seen["ran"] is True  # the item ran before the claimer asked
            assert seen["runner"] == seen["asker"]  # on the claiming driver's own turn
            wait_until(
                lambda: statuses(sessions)[item_id] is RetryStatus.COMPLETED,
                what="the item recorded while the query waits",
            )
            may_answer.set()
            assert handle.stop().completed == 1
    finally:
        may_answer.set()
