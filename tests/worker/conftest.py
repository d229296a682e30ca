"""Helpers for the worker tests: condition waits, a worker running in a thread, log capture,
and a PostgreSQL server of our own that a test may stop and start."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import RetryQueue, RetryStatus
from retryqueue.models import RetryHistory, RetryItem
from retryqueue.worker import RunReport, Worker
from tests.support.async_worker import BlockingAsyncWorker
from tests.support.logs import LogRecorder  # noqa: F401  (re-exported for the worker tests)
from tests.support.restartable import RestartablePostgres, restartable_postgres

# wait_until is re-exported: the worker tests import it from here.
from tests.support.waiting import DEADLINE, wait_until  # noqa: F401

WORKER_KINDS = ("threads", "asyncio")
_kind = ["threads"]


@pytest.fixture(params=WORKER_KINDS)
def worker_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each worker in turn: the thread Worker and the AsyncWorker (via its blocking view).

    Modules whose tests hold for both use ``pytestmark = pytest.mark.usefixtures("worker_kind")``
    and build workers with :func:`new_worker`.
    """
    _kind[0] = str(request.param)
    try:
        yield _kind[0]
    finally:
        _kind[0] = "threads"


def new_worker(queue: RetryQueue, sessions: sessionmaker[Session], handlers: Any, **kw: Any) -> Any:
    """A worker of the kind the current test runs with (see :func:`worker_kind`)."""
    if _kind[0] == "asyncio":
        return BlockingAsyncWorker(queue, sessions, handlers, **kw)
    return Worker(queue, sessions, handlers, **kw)


@dataclass
class RunningWorker:
    """A worker whose ``run()`` executes in a background thread."""

    worker: Worker
    thread: threading.Thread
    report: list[RunReport] = field(default_factory=list)
    error: list[BaseException] = field(default_factory=list)

    def stop(self, timeout: float = DEADLINE) -> RunReport:
        """Stop the worker and wait for run() to return; its report."""
        self.worker.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "worker.run() did not return after stop()"
        if self.error:
            raise self.error[0]
        return self.report[0]


@contextmanager
def running(worker: Worker) -> Iterator[RunningWorker]:
    """Run ``worker`` in a thread for the block; always stopped and joined afterwards."""
    handle = RunningWorker(worker, threading.Thread())

    def target() -> None:
        try:
            handle.report.append(worker.run())
        except BaseException as exc:  # surfaced by stop()
            handle.error.append(exc)

    handle.thread = threading.Thread(target=target, name=f"run-{worker.worker_id}", daemon=True)
    handle.thread.start()
    try:
        yield handle
    finally:
        if handle.thread.is_alive():
            worker.stop()
            handle.thread.join(DEADLINE)


def enqueue(
    sessions: sessionmaker[Session],
    queue: RetryQueue,
    event_type: str,
    count: int = 1,
    **fields: Any,
) -> list[int]:
    """Enqueue ``count`` items of one event type; their ids."""
    with sessions.begin() as session:
        return [queue.enqueue(session, event_type, {"n": n}, **fields).id for n in range(count)]


def statuses(sessions: sessionmaker[Session]) -> dict[int, RetryStatus]:
    """Every item's status by id."""
    with sessions() as session:
        rows = session.execute(select(RetryItem.id, RetryItem.status))
        return {row.id: row.status for row in rows}


def item(sessions: sessionmaker[Session], item_id: int) -> RetryItem:
    """One queue row, freshly read."""
    with sessions() as session:
        return session.get_one(RetryItem, item_id)


def history(sessions: sessionmaker[Session], item_id: int) -> list[tuple[str, int, str | None]]:
    """(status, attempt_number, worker_id) of an item's history rows, oldest first."""
    with sessions() as session:
        rows = session.execute(
            select(RetryHistory.status, RetryHistory.attempt_number, RetryHistory.worker_id)
            .where(RetryHistory.retry_queue_id == item_id)
            .order_by(RetryHistory.id)
        )
        return [(status, attempt, worker) for status, attempt, worker in rows]


def count_status(sessions: sessionmaker[Session], status: RetryStatus) -> int:
    """How many items have this status."""
    with sessions() as session:
        stmt = select(func.count()).select_from(RetryItem).where(RetryItem.status == status)
        return int(session.scalar(stmt) or 0)


# -- a PostgreSQL server the test may restart ------------------------------------------


@pytest.fixture(scope="module")
def restartable_pg() -> Iterator[RestartablePostgres]:
    """A dedicated embedded PostgreSQL (skipped when the suite uses an external server)."""
    with restartable_postgres() as server:
        yield server
