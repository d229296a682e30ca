"""Failure forensics: fingerprint, exception type and bounded traceback on history rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import RetryQueue
from retryqueue.fingerprint import fingerprint
from retryqueue.models import RetryHistory, RetryItem
from retryqueue.queue import TRACEBACK_LIMIT
from retryqueue.testing import drain
from retryqueue.worker import Worker
from tests.support.logs import LogRecorder


def history_of(sessions: sessionmaker[Session], item_id: int) -> list[RetryHistory]:
    """An item's history rows, oldest first."""
    with sessions() as session:
        return list(
            session.scalars(
                select(RetryHistory)
                .where(RetryHistory.retry_queue_id == item_id)
                .order_by(RetryHistory.id)
            )
        )


class TestFail:
    """RetryQueue.fail stores what it is given, bounded, and fingerprints the failure."""

    def test_fields_are_stored(self, sessions: sessionmaker[Session]) -> None:
        queue = RetryQueue()
        long_trace = "Traceback (most recent call last):\n" + "  frame\n" * 5000 + "Boom: end\n"
        with sessions.begin() as session:
            item = queue.enqueue(session, "t", {})
        with sessions.begin() as session:
            (claim,) = queue.acquire(session, "w")
            queue.fail(
                session,
                claim,
                error_message="timeout after 12s",
                error_code="TIMEOUT",
                exception_type="builtins.TimeoutError",
                error_traceback=long_trace,
            )
        (row,) = history_of(sessions, item.id)
        assert row.exception_type == "builtins.TimeoutError"
        assert row.error_traceback is not None
        assert len(row.error_traceback) == TRACEBACK_LIMIT
        assert row.error_traceback.startswith("... (truncated)")
        assert row.error_traceback.endswith("Boom: end\n")
        expected = fingerprint("TIMEOUT", "timeout after 99s")
        assert row.error_fingerprint == expected
        with sessions() as session:
            stored = session.get(RetryItem, item.id)
            assert stored is not None and stored.error_fingerprint == expected


class TestHandlers:
    """A handler's exception reaches the history row with its type and traceback."""

    def test_drain_records_the_exception(self, sessions: sessionmaker[Session]) -> None:
        queue = RetryQueue()

        def handler(item: Any) -> None:
            raise ConnectionRefusedError(f"refused by 10.0.0.{item.id % 250 + 1}")

        with sessions.begin() as session:
            item = queue.enqueue(session, "t", {}, max_retries=0)
        with sessions.begin() as session:
            drain(queue, session, {"t": handler})
        (row,) = history_of(sessions, item.id)
        assert row.exception_type == "ConnectionRefusedError"
        assert row.error_traceback is not None
        assert "in handler" in row.error_traceback
        assert row.error_traceback.rstrip().endswith(f"refused by 10.0.0.{item.id % 250 + 1}")
        assert row.error_fingerprint == fingerprint("ConnectionRefusedError", "refused by 10.9.9.9")


class TestWorkerLog:
    """The worker's log line of a failed attempt carries the message, not only the code."""

    def test_message_in_the_log(
        self, sessions: sessionmaker[Session], worker_logs: LogRecorder
    ) -> None:
        queue = RetryQueue()

        def handler(item: Any) -> None:
            raise ValueError("invoice 7 has a negative amount")

        with sessions.begin() as session:
            queue.enqueue(session, "t", {})
        Worker(queue, sessions, {"t": handler}).run_once()
        (line,) = worker_logs.matching("attempt 1: retry_scheduled")
        assert line.getMessage().endswith("[ValueError]: invoice 7 has a negative amount")
