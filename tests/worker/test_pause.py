"""Both workers: ``RetryLater(..., pause_key=True)`` pauses the item's key for every worker
and the attempt that carried the news is not counted."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import CircuitBreaker, InvalidArgument, ManualClock, RetryQueue, RetryStatus
from retryqueue.worker import Job, RetryLater, RunReport
from tests.worker.conftest import enqueue, history, item, new_worker

pytestmark = pytest.mark.usefixtures("worker_kind")


class Saturated:
    """A destination answering 429 with Retry-After until the test lets it through."""

    def __init__(self, retry_after: float = 30, pause: bool | str = True) -> None:
        self.busy = True
        self.retry_after = retry_after
        self.pause = pause
        self.calls: list[int] = []

    def __call__(self, job: Job) -> None:
        self.calls.append(job.id)
        if self.busy:
            raise RetryLater(
                after=self.retry_after, pause_key=self.pause, code="HTTP_429", message="429"
            )


class TestPauseKey:
    """A 429 with Retry-After pauses the key; no attempt is counted; the pause ends."""

    def test_429_pauses_the_key_for_every_worker(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        crm = Saturated(retry_after=30)
        mailed: list[int] = []
        handlers = {"crm.sync": crm, "mail.send": lambda job: mailed.append(job.id)}
        held = enqueue(sessions, queue, "crm.sync", 3, plugin_name="crm", priority=9)
        mail = enqueue(sessions, queue, "mail.send", 1, plugin_name="mail")
        first = new_worker(queue, sessions, handlers, batch_size=1, listen=False)
        assert first.run_once() == RunReport(acquired=1, paused=1)
        (news,) = crm.calls
        row = item(sessions, news)
        assert (row.status, row.retry_count) == (RetryStatus.PENDING, 0)
        assert row.next_retry_at == clock.now() + timedelta(seconds=30)
        assert history(sessions, news)[0][:2] == ("paused", 1)

        other_host = RetryQueue(clock=clock)  # another process: its own presence cache
        second = new_worker(other_host, sessions, handlers, listen=False)
        assert second.run_once() == RunReport(acquired=1, completed=1)
        assert mailed == mail and crm.calls == [news]  # the crm items were skipped
        for item_id in held:
            assert item(sessions, item_id).retry_count == 0

        with sessions() as session:
            (pause,) = queue.key_limits(session)
        assert (pause.key, pause.pause_reason) == ("crm", "HTTP_429")
        assert pause.paused_until == clock.now() + timedelta(seconds=30)

        clock.advance(30)
        crm.busy = False
        assert second.run_once() == RunReport(acquired=3, completed=3)
        assert history(sessions, news)[-1][:2] == ("completed", 1)  # still its first attempt

    def test_per_event_type_breaker_pauses_the_pair(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        crm = Saturated()
        handlers = {"crm.sync": crm, "crm.export": lambda job: None}
        enqueue(sessions, queue, "crm.sync", 2, plugin_name="crm")
        enqueue(sessions, queue, "crm.export", 2, plugin_name="crm")
        breaker = CircuitBreaker(per_event_type=True, clock=clock)
        worker = new_worker(queue, sessions, handlers, breaker=breaker, listen=False)
        assert worker.run_once() == RunReport(acquired=4, completed=2, paused=2)
        with sessions() as session:
            assert [p.key for p in queue.key_limits(session)] == ["crm:crm.sync"]
            assert breaker.states(session) == []  # a pause is not a failure

    def test_named_key_and_item_without_plugin(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        named = Saturated(retry_after=5, pause="gateway")
        handlers = {"crm.sync": named, "ping": Saturated(retry_after=5)}
        enqueue(sessions, queue, "crm.sync", 1, plugin_name="crm")
        (plain,) = enqueue(sessions, queue, "ping", 1)
        worker = new_worker(queue, sessions, handlers, listen=False)
        assert worker.run_once() == RunReport(acquired=2, retried=1, paused=1)
        with sessions() as session:
            assert [p.key for p in queue.key_limits(session)] == ["gateway"]
        assert item(sessions, plain).retry_count == 1  # no key to pause: a counted retry

    def test_absurd_pause_is_a_counted_failure(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        for bad in (0, -1, float("nan"), 10 * 365 * 86400):
            with pytest.raises(InvalidArgument):
                RetryLater(after=bad, pause_key=True)
        with pytest.raises(InvalidArgument):
            RetryLater(5, after=5)
        with pytest.raises(InvalidArgument):
            RetryLater(5, pause_key=" ")

        def handler(job: Job) -> None:
            raise RetryLater(after=30 * 86400, pause_key=True)

        (item_id,) = enqueue(sessions, queue, "crm.sync", 1, plugin_name="crm")
        worker = new_worker(queue, sessions, {"crm.sync": handler}, listen=False)
        assert worker.run_once() == RunReport(acquired=1, retried=1)
        assert item(sessions, item_id).retry_count == 1
        with sessions() as session:
            assert queue.key_limits(session) == []
