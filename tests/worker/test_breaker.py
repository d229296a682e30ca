"""Both workers with a circuit breaker: an open circuit's items wait without spending
retries, one probe after the cool-down, and the probe's success reopens the flow."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import CircuitBreaker, CircuitStatus, ManualClock, RetryQueue, RetryStatus
from retryqueue.circuits import circuit_events
from retryqueue.worker import Job, PermanentError, RunReport, Worker
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

    def test_idle_rounds_start_no_probe_without_work_and_do_not_poll(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        # The reported case: a 30 s cool-down, a 60 s backoff. Rounds between the two found
        # a probe due, won it, claimed nothing and reopened the circuit: an audit row and a
        # transition each time.
        crm = Downstream()
        breaker = CircuitBreaker(failure_threshold=1, cooldown=30, clock=clock)
        handlers = {"crm.sync": crm}
        worker = new_worker(queue, sessions, handlers, breaker=breaker, listen=False)
        enqueue(sessions, queue, "crm.sync", plugin_name="crm", retry_delay_seconds=60)
        assert worker.run_once() == RunReport(acquired=1, retried=1)  # opens for 30 s
        for _ in range(5):  # rounds at 31, 36, 41, 46 and 51 s
            clock.advance(31 if _ == 0 else 5)
            assert worker.run_once() == RunReport()
        with sessions() as session:
            trail = [(e.from_status.value, e.to_status.value) for e in circuit_events(session)]
        assert trail == [("closed", "open")]
        clock.advance(10)  # 61 s: the item is due, the probe starts and takes it
        crm.up = True
        assert worker.run_once() == RunReport(acquired=1, completed=1)
        assert breaker_states(sessions, breaker) == {"crm": CircuitStatus.CLOSED.value}

    def test_items_held_by_an_open_circuit_do_not_make_an_idle_worker_poll(
        self, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
    ) -> None:
        breaker = CircuitBreaker(failure_threshold=1, cooldown=30, clock=clock)
        worker = Worker(queue, sessions, {}, breaker=breaker, listen=False, poll_interval=5)
        with sessions.begin() as session:
            breaker.record(session, [("crm", "crm.sync", False)])  # open until 30 s
        enqueue(sessions, queue, "crm.sync", plugin_name="crm")  # due now, but held back
        enqueue(sessions, queue, "mail.send", plugin_name="mail", delay=45)
        clock.advance(10)
        with sessions.begin() as session:
            due = worker._due(session)
        assert due == 20  # when the circuit may be probed, not "due now"
        assert worker._idle_for(due) == 5  # poll_interval, not the 0.25 s recheck

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
