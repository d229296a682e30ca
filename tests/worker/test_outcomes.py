"""run_once on every backend: what each handler outcome writes, the report and observers."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import ManualClock, RetryQueue, RetryStatus
from retryqueue.worker import (
    AttemptResult,
    Job,
    PermanentError,
    RetryLater,
    Router,
    RunReport,
    Worker,
)
from tests.worker.conftest import enqueue, history, item, new_worker

pytestmark = pytest.mark.usefixtures("worker_kind")


def make_worker(
    queue: RetryQueue, sessions: sessionmaker[Session], router: Any, **kw: Any
) -> Worker:
    kw.setdefault("worker_id", "worker-test")
    kw.setdefault("listen", False)
    return new_worker(queue, sessions, router, **kw)


class CodedError(Exception):
    code = "UPSTREAM_502"


class TestOutcomes:
    """Each way a handler can end is persisted as the issue describes."""

    def test_return_completes_and_times_the_attempt(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        seen: list[Job] = []

        def handle(job: Job) -> None:
            seen.append(job)
            time.sleep(0.03)  # the work being timed, not synchronisation

        [item_id] = enqueue(
            sessions,
            queue,
            "order.paid",
            event_metadata={"src": "api"},
            correlation_id="c-1",
            tags=["t"],
            priority=7,
            channel_name="ch",
        )
        report = make_worker(queue, sessions, {"order.paid": handle}).run_once()
        assert report == RunReport(acquired=1, completed=1)
        row = item(sessions, item_id)
        assert row.status is RetryStatus.COMPLETED and row.locked_by is None
        assert history(sessions, item_id) == [("completed", 1, "worker-test")]
        with sessions() as session:
            [entry] = queue.history(session, item_id)
        assert entry.duration_ms is not None and entry.duration_ms >= 30
        [job] = seen
        assert (job.id, job.event_type, job.attempt, job.max_retries, job.priority) == (
            item_id,
            "order.paid",
            1,
            3,
            7,
        )
        assert (job.channel_name, job.correlation_id, job.tags) == ("ch", "c-1", ("t",))
        assert dict(job.metadata) == {"src": "api"} and dict(job.event_data) == {"n": 0}
        with pytest.raises(TypeError):
            job.event_data["n"] = 1
        with pytest.raises(dataclasses.FrozenInstanceError):
            job.attempt = 2  # type: ignore[misc]

    def test_exceptions_retry_with_backoff_and_their_code(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        def coded(job: Job) -> None:
            raise CodedError("bad gateway")

        def plain(job: Job) -> None:
            raise KeyError("missing")

        coded_id = enqueue(sessions, queue, "a.coded", retry_delay_seconds=30)[0]
        plain_id = enqueue(sessions, queue, "a.plain", retry_delay_seconds=30)[0]
        report = make_worker(queue, sessions, {"a.coded": coded, "a.plain": plain}).run_once()
        assert report == RunReport(acquired=2, retried=2)
        for item_id, code in ((coded_id, "UPSTREAM_502"), (plain_id, "KeyError")):
            row = item(sessions, item_id)
            assert (row.status, row.retry_count, row.last_error_code) == (
                RetryStatus.PENDING,
                1,
                code,
            )
            assert row.next_retry_at == clock.now() + timedelta(seconds=30)
            assert history(sessions, item_id) == [("retry_scheduled", 1, "worker-test")]
        assert item(sessions, coded_id).error_message == "bad gateway"

    def test_permanent_error_and_no_handler_fail_at_once(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        def refuse(job: Job) -> None:
            raise PermanentError("invalid card", code="CARD_INVALID")

        refused = enqueue(sessions, queue, "card.charge", max_retries=5)[0]
        orphan = enqueue(sessions, queue, "nobody.handles.this", max_retries=5)[0]
        report = make_worker(queue, sessions, {"card.*": refuse}).run_once()
        assert report == RunReport(acquired=2, failed=2)
        assert (item(sessions, refused).status, item(sessions, refused).last_error_code) == (
            RetryStatus.FAILED,
            "CARD_INVALID",
        )
        row = item(sessions, orphan)
        assert (row.status, row.last_error_code, row.retry_count) == (
            RetryStatus.FAILED,
            "NO_HANDLER",
            0,
        )
        assert "nobody.handles.this" in (row.error_message or "")
        assert history(sessions, orphan) == [("failed", 1, "worker-test")]

    def test_retry_later_counts_the_attempt_and_uses_its_delay(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        def busy(job: Job) -> None:
            raise RetryLater(timedelta(minutes=10))

        later, last = enqueue(sessions, queue, "api.call", 2, max_retries=1)
        with sessions.begin() as session:  # make `last` be on its final attempt
            claimed = queue.acquire(session, "setup", 1, 300)
            assert [c.id for c in claimed] == [later]
            queue.release(session, "setup", lease_token=claimed[0].lease_token)
        with sessions.begin() as session:
            from retryqueue.models import RetryItem

            session.get_one(RetryItem, last).retry_count = 1
        report = make_worker(queue, sessions, {"api.call": busy}).run_once()
        assert report == RunReport(acquired=2, retried=1, dead_lettered=1)
        row = item(sessions, later)
        assert (row.status, row.retry_count) == (RetryStatus.PENDING, 1)
        assert row.next_retry_at == clock.now() + timedelta(minutes=10)
        assert item(sessions, last).status is RetryStatus.DEAD_LETTER

    def test_route_settings_pick_retryable_exceptions_and_the_backoff(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        router = Router()

        @router.route("net.*", retry_on=(TimeoutError,), delay=5, multiplier=3)
        def call(job: Job) -> None:
            raise TimeoutError("slow") if job.event_data["n"] == 0 else ValueError("bug")

        timeout_id, bug_id = enqueue(sessions, queue, "net.fetch", 2, retry_delay_seconds=600)
        report = make_worker(queue, sessions, router).run_once()
        assert report == RunReport(acquired=2, retried=1, failed=1)
        assert item(sessions, timeout_id).next_retry_at == clock.now() + timedelta(seconds=5)
        assert item(sessions, bug_id).status is RetryStatus.FAILED


class TestRunOnce:
    """The report, the observers and how outcomes are batched."""

    def test_empty_queue_gives_an_empty_report(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        assert make_worker(queue, sessions, {}).run_once() == RunReport()

    def test_observers_see_every_attempt_and_a_failing_one_is_contained(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        results: list[AttemptResult] = []

        def broken(result: AttemptResult) -> None:
            raise RuntimeError("observer bug")

        def fail(job: Job) -> None:
            raise PermanentError("no")

        ok_id = enqueue(sessions, queue, "ok")[0]
        bad_id = enqueue(sessions, queue, "bad", plugin_name="p")[0]
        worker = make_worker(
            queue,
            sessions,
            {"ok": lambda job: None, "bad": fail},
            observers=[broken, results.append],
        )
        assert worker.run_once() == RunReport(acquired=2, completed=1, failed=1)
        by_id = {r.item_id: r for r in results}
        assert set(by_id) == {ok_id, bad_id}
        assert (by_id[ok_id].outcome, by_id[ok_id].error_code, by_id[ok_id].attempt) == (
            "completed",
            None,
            1,
        )
        assert (by_id[bad_id].outcome, by_id[bad_id].error_code, by_id[bad_id].plugin_name) == (
            "failed",
            "PermanentError",
            "p",
        )
        assert all(r.duration_seconds >= 0 for r in results)

    def test_completions_of_a_batch_are_one_statement(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        completing: list[str] = []

        def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            # On PostgreSQL the UPDATE sits in a CTE that also writes the history rows.
            if "UPDATE daz_retry_queue" in statement and "completed_at" in statement:
                completing.append(statement)

        enqueue(sessions, queue, "bulk", 8)
        # On the Engine class: the asyncio worker's engine is its own (its sync_engine).
        event.listen(Engine, "before_cursor_execute", count)
        try:
            # Outcomes wait up to flush_age for batch-mates: generous here, so that a slow
            # machine does not split the batch into two flushes.
            report = make_worker(
                queue,
                sessions,
                {"bulk": lambda job: None},
                concurrency=4,
                batch_size=8,
                flush_age=5,
            ).run_once()
        finally:
            event.remove(Engine, "before_cursor_execute", count)
        assert report == RunReport(acquired=8, completed=8)
        assert len(completing) == 1

    def test_concurrency_runs_handlers_side_by_side(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        barrier = threading.Barrier(3, timeout=10)  # fails unless 3 handlers overlap

        def meet(job: Job) -> None:
            barrier.wait()

        enqueue(sessions, queue, "meet", 3)
        report = make_worker(queue, sessions, {"meet": meet}, concurrency=3).run_once()
        assert report == RunReport(acquired=3, completed=3)
