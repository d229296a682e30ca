"""Moving rows out of the default partition loses nothing, under concurrent writes.

``create_partitions`` rescues the rows of a missing month from the default partition
(build the month, copy, delete, attach). Writers must not land in the default partition in
between: they wait for the move's lock and then go into the new month.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, select, text
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import ManualClock, RetryQueue, RetryStatus, migrations
from retryqueue.models import RetryHistory
from tests.partitioning.conftest import NOW, Populator, at
from tests.support.races import WAIT, wait_for
from tests.support.races import Background as Outcome

LONG = timedelta(days=3650)


@pytest.fixture
def partitioned(pg_engine: Engine) -> Engine:
    """The test database, partitioned from NOW's month to three months after it."""
    migrations.enable_partitioning(pg_engine, now=NOW)
    return pg_engine


def lock_waiters(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


def home(engine: Engine, item_id: int) -> str | None:
    with engine.connect() as connection:
        found = connection.execute(
            text("SELECT tableoid::regclass::text FROM daz_retry_queue WHERE id = :i"),
            {"i": item_id},
        ).scalar()
    return None if found is None else str(found)


@pytest.fixture
def paused_move(partitioned: Engine) -> Iterator[tuple[threading.Event, threading.Event]]:
    """(copied, go): the next move stops after copying, before deleting, until ``go``."""
    copied, go = threading.Event(), threading.Event()

    def pause(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("DELETE FROM daz_retry_queue_default"):
            copied.set()
            go.wait(WAIT)

    event.listen(partitioned, "before_cursor_execute", pause)
    yield copied, go
    go.set()
    event.remove(partitioned, "before_cursor_execute", pause)


class TestMoveHoldsWriters:
    """An enqueue and a claim made while the rows move wait, then succeed in the month."""

    def test_deterministic_interleaving(
        self,
        partitioned: Engine,
        populate: Populator,
        sessions: sessionmaker[Session],
        paused_move: tuple[threading.Event, threading.Event],
    ) -> None:
        copied, go = paused_move
        stranded = populate.item(RetryStatus.PENDING, at(2027, 1))
        assert home(partitioned, stranded) == "daz_retry_queue_default"
        queue = RetryQueue(clock=ManualClock(at(2027, 1, 20)))

        def move() -> list[str]:
            with partitioned.begin() as connection:
                return migrations.create_partitions(connection, months_ahead=0, now=at(2027, 1))

        mover = Outcome(move)
        assert copied.wait(WAIT)
        late_event = uuid.uuid4()

        def enqueue() -> int:
            with sessions.begin() as session:
                item = queue.enqueue(
                    session, "late", {}, event_id=late_event, delay=86400, ttl=LONG
                )
                return item.id  # not due yet: the claim below takes only the stranded item

        def claim() -> list[Any]:
            with sessions.begin() as session:
                return queue.acquire(session, "w", 10, lock_timeout=1e6)

        producer, claimer = Outcome(enqueue), Outcome(claim)
        # Both calls are now either finished (the bug: they wrote into the default
        # partition mid-move) or waiting for the move's lock.
        wait_for(
            lambda: producer.done.is_set() + claimer.done.is_set() + lock_waiters(partitioned) >= 2,
            "the enqueue and the claim to finish or to wait for the move's lock",
        )
        go.set()
        assert mover.result() == ["daz_retry_queue_p2027_01"]
        late = producer.result()
        claimed = claimer.result()
        assert home(partitioned, late) == "daz_retry_queue_p2027_01"  # acknowledged, present
        assert [item.id for item in claimed] == [stranded]
        with sessions.begin() as session:
            assert queue.complete(session, claimed[0])
        with sessions() as session:
            assert queue.get(session, stranded).status is RetryStatus.COMPLETED
            history = session.scalars(
                select(RetryHistory.status).where(RetryHistory.retry_queue_id == stranded)
            ).all()
        assert history == ["completed"]
        assert home(partitioned, stranded) == "daz_retry_queue_p2027_01"


class TestMoveUnderContinuousTraffic:
    """A producer and a worker run while month after month is rescued: nothing is lost."""

    def test_natural_timing(
        self, partitioned: Engine, populate: Populator, sessions: sessionmaker[Session]
    ) -> None:
        months = [at(2026, 10) + timedelta(days=31 * step) for step in range(8)]
        months = [datetime(m.year, m.month, 10, 12, tzinfo=m.tzinfo) for m in months]
        for month in months:
            populate.item(RetryStatus.PENDING, month)  # every future month starts stranded
        stop = threading.Event()
        acknowledged: list[int] = []
        completions: list[bool] = []

        def produce() -> None:
            turn = 0
            while not stop.is_set():
                queue = RetryQueue(clock=ManualClock(months[turn % len(months)]))
                with sessions.begin() as session:
                    acknowledged.append(queue.enqueue(session, "p", {"n": turn}, ttl=LONG).id)
                turn += 1

        def work() -> None:
            queue = RetryQueue(clock=ManualClock(months[-1] + timedelta(days=40)))
            while not stop.is_set():
                with sessions.begin() as session:
                    claimed = queue.acquire(session, "w", 5, lock_timeout=1e6)
                for item in claimed:
                    with sessions.begin() as session:
                        completions.append(queue.complete(session, item))

        producer, worker = Outcome(produce), Outcome(work)
        try:
            for month in months:
                seen = len(acknowledged)
                wait_for(
                    lambda seen=seen: len(acknowledged) >= seen + 3 or producer.done.is_set(),
                    "producer progress",
                )
                if producer.done.is_set() or worker.done.is_set():
                    break  # one of them failed: reported below
                with partitioned.begin() as connection:
                    made = migrations.create_partitions(connection, months_ahead=0, now=month)
                assert made[-1] == migrations.partitioning.partition_name(month)
        finally:
            stop.set()
        producer.result()  # no CheckViolation, no error of any kind
        worker.result()
        assert completions and all(completions)  # a claim made during a move still completes
        with partitioned.connect() as connection:
            present = set(connection.execute(text("SELECT id FROM daz_retry_queue")).scalars())
            in_default = connection.execute(
                text("SELECT count(*) FROM daz_retry_queue_default")
            ).scalar_one()
            recorded = connection.execute(
                text(
                    "SELECT count(*) FROM (SELECT retry_queue_id FROM daz_retry_history "
                    "GROUP BY retry_queue_id HAVING count(*) > 1) twice"
                )
            ).scalar_one()
        assert set(acknowledged) <= present
        assert recorded == 0
        assert in_default == 0  # every month exists now: everything moved out
