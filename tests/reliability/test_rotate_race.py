"""Key rotation never overwrites an outcome written while it runs (PostgreSQL, MariaDB).

``rotate_keys`` reads a batch and writes it back sealed with the newest key. A ``fail()``
committed between the read and the write must survive: the rows are locked from the read
to the commit, and the worker's outcome waits for them (or is rotated afterwards).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import ManualClock, NewItem, RetryQueue, RetryStatus, encryption
from tests.support.races import Background, session_id, wait_for, waits_for_a_lock

pytestmark = pytest.mark.reliability


@pytest.fixture(params=["postgresql", "mysql"])
def backend(request: pytest.FixtureRequest) -> str:
    """The backends with row locks (SQLite has one writer at a time)."""
    return str(request.param)


@pytest.fixture
def keys() -> Iterator[list[str]]:
    """Two fresh keys, the old one configured; encryption is off again afterwards."""
    made = [encryption.generate_key(), encryption.generate_key()]
    encryption.configure(made[1:])
    yield made
    encryption.configure(None)


class TestRotationAgainstAnOutcome:
    """A fail() between rotation's read and its write is kept."""

    def test_deterministic_interleaving(
        self, sessions: sessionmaker[Session], queue: RetryQueue, keys: list[str]
    ) -> None:
        with sessions.begin() as session:
            queue.enqueue(session, "pay", {"n": 1}, max_retries=5)
        with sessions.begin() as session:
            (claimed,) = queue.acquire(session, "w1")
        encryption.configure(keys)  # the new key first, the old one still opens
        read, go = threading.Event(), threading.Event()

        def pause(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().startswith("UPDATE daz_retry_queue"):
                read.set()
                go.wait(60)

        def rotate() -> int:
            with sessions.begin() as session:
                event.listen(session.connection(), "before_cursor_execute", pause)
                return sum(queue.iter_rotate_keys(session))

        rotation = Background(rotate)
        assert read.wait(60)
        server: list[int] = []

        def fail() -> bool:
            with sessions.begin() as session:
                server.append(session_id(session.connection()))
                return queue.fail(session, claimed, error_message="boom", error_code="E1")

        failure = Background(fail)
        wait_for(
            lambda: (
                failure.done.is_set()
                or (bool(server) and waits_for_a_lock(sessions.kw["bind"], server[0]))
            ),
            "fail() to finish or to wait for rotation's row lock",
        )
        go.set()
        assert rotation.result() >= 1
        assert failure.result() is True
        with sessions() as session:
            item = queue.get(session, claimed.id)
        assert (item.status, item.retry_count) == (RetryStatus.PENDING, 1)
        assert (item.error_message, item.last_error_code) == ("boom", "E1")


class TestRotationUnderTraffic:
    """A worker fails items over and over while rotations run: no message goes back."""

    def test_natural_timing(
        self, sessions: sessionmaker[Session], clock: ManualClock, keys: list[str]
    ) -> None:
        queue = RetryQueue(clock=clock)
        with sessions.begin() as session:
            queue.enqueue_many(
                session, [NewItem("pay", {"n": n}, max_retries=1000) for n in range(10)]
            )
        encryption.configure(keys)
        done = threading.Event()

        def work() -> int:
            failed = 0
            for _ in range(8):
                with sessions.begin() as session:
                    claimed = queue.acquire(session, "w1", 10)
                for item in claimed:
                    with sessions.begin() as session:
                        message = f"attempt {item.retry_count + 1}"
                        failed += queue.fail(session, item, error_message=message, retry_after=0)
            done.set()
            return failed

        def rotate() -> int:
            rounds = 0
            while not done.is_set():
                with sessions() as session:
                    for _ in queue.iter_rotate_keys(session, batch_size=7):
                        session.commit()
                rounds += 1
            return rounds

        worker, rotation = Background(work), Background(rotate)
        assert worker.result() > 0  # items rotation held were skipped by acquire, not failed
        assert rotation.result() >= 1
        with sessions() as session:
            rows = session.execute(
                text("SELECT id, retry_count FROM daz_retry_queue ORDER BY id")
            ).all()
            assert sum(retry_count for _, retry_count in rows) == worker.result()
            for item_id, retry_count in rows:
                if retry_count:
                    message = queue.get(session, item_id).error_message
                    assert message == f"attempt {retry_count}", item_id
