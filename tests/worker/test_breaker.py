"""Both workers with a circuit breaker: an open circuit's items wait without spending
retries, one probe after the cool-down, and the probe's success reopens the flow."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import CircuitBreaker, CircuitStatus, ManualClock, RetryQueue, RetryStatus
from retryqueue.worker import Job, PermanentError, RunReport
from tests.worker.conftest import enqueue, item, new_worker

pytestmark = pytest.mark.usefixtures("worker_kind")


class Downstream:
    """A plugin's remote service: down until the test brings it up."""

    def __init__(self) -> None:
        self.up = False
        self.calls: list[int] = []

    def __call__(self, job: Job) -> None:
        self.calls.append(job.id)
        if not self.up:
            raise ConnectionError("crm is down")


def breaker_states(sessions: sessionmaker[Session], breaker: CircuitBreaker) -> dict[str, str]:
    with sessions() as session:
        return {state.key: state.status.value for state in breaker.states(session)}


class TestWorkerWithBreaker:
    """The worker gates its claims and feeds outcomes to the breaker in one transaction."""

    def test_open_circuit_holds_items_then_one_probe_closes_it(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        crm = Downstream()
        mailed: list[int] = []
        breaker = CircuitBreaker(failure_threshold=3, cooldown=60, clock=clock)
        handlers = {"crm.sync": crm, "mail.send": lambda job: mailed.append(job.id)}

        def worker() -> object:
            return new_worker(queue, sessions, handlers, breaker=breaker, listen=False)

        first = enqueue(sessions, queue, "crm.sync", 3, plugin_name="crm", max_retries=5)
        assert worker().run_once() == RunReport(acquired=3, retried=3)
        assert breaker_states(sessions, breaker) == {"crm": CircuitStatus.OPEN.value}

        held = enqueue(sessions, queue, "crm.sync", 2, plugin_name="crm", max_retries=5)
        mail = enqueue(sessions, queue, "mail.send", 1, plugin_name="mail")
        assert worker().run_once() == RunReport(acquired=1, completed=1)
        assert mailed == mail
        assert len(crm.calls) == 3  # nothing for crm while open...
        for item_id in held:  # ...and its items spent no retry
            row = item(sessions, item_id)
            assert (row.status, row.retry_count) == (RetryStatus.PENDING, 0)

        clock.advance(61)  # past the cool-down (and the failed items' backoff)
        crm.up = True
        assert worker().run_once() == RunReport(acquired=1, completed=1)  # the probe alone
        assert breaker_states(sessions, breaker) == {"crm": CircuitStatus.CLOSED.value}

        assert worker().run_once() == RunReport(acquired=4, completed=4)
        assert sorted(crm.calls[3:]) == sorted(first + held)

    def test_permanent_errors_do_not_trip_the_breaker(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        def refuse(job: Job) -> None:
            raise PermanentError("bad payload")

        breaker = CircuitBreaker(failure_threshold=2, cooldown=60, clock=clock)
        enqueue(sessions, queue, "crm.sync", 4, plugin_name="crm")
        worker = new_worker(queue, sessions, {"crm.sync": refuse}, breaker=breaker, listen=False)
        assert worker.run_once() == RunReport(acquired=4, failed=4)
        assert breaker_states(sessions, breaker) in ({}, {"crm": CircuitStatus.CLOSED.value})
