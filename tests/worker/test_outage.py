"""PostgreSQL restarted under two running workers: every item completed exactly once."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import sessionmaker

from retryqueue import RetryQueue, RetryStatus, create_engine, migrations
from retryqueue.models import RetryHistory, RetryItem
from retryqueue.worker import Job
from tests.worker.conftest import (
    LogRecorder,
    RestartablePostgres,
    count_status,
    enqueue,
    new_worker,
    running,
    wait_until,
)

ITEMS = 60

pytestmark = pytest.mark.usefixtures("worker_kind")


@pytest.fixture
def outage_engines(restartable_pg: RestartablePostgres) -> Iterator[list[Engine]]:
    """Two engines (one per worker) on a migrated database of the restartable server.

    Pre-ping: the test reads through them after the restart, and the asyncio worker (on
    engines of its own) never cleans their pools of the connections the restart broke.
    """
    url = restartable_pg.server.admin_url
    engines = [create_engine(url, pool_pre_ping=True) for _ in range(2)]
    migrations.upgrade(engines[0])
    with engines[0].begin() as connection:  # the server outlives one test: start empty
        connection.execute(delete(RetryHistory))
        connection.execute(delete(RetryItem))
    try:
        yield engines
    finally:
        for engine in engines:
            engine.dispose()


@pytest.mark.slow
class TestDatabaseRestart:
    """The database going away mid-run costs time, never an item or a double completion."""

    def test_two_workers_survive_a_postgres_restart(
        self,
        restartable_pg: RestartablePostgres,
        outage_engines: list[Engine],
        worker_logs: LogRecorder,
    ) -> None:
        queue = RetryQueue()
        makers = [sessionmaker(engine, expire_on_commit=False) for engine in outage_engines]
        ids = enqueue(makers[0], queue, "outage.item", ITEMS, retry_delay_seconds=0)
        calls: Counter[int] = Counter()
        lock = threading.Lock()

        def handle(job: Job) -> None:
            with lock:
                calls[job.id] += 1
            time.sleep(0.1)  # work in progress when the server goes away

        workers = [
            new_worker(
                queue,
                sessions,
                {"outage.item": handle},
                worker_id=f"outage-{n}",
                batch_size=5,
                lock_timeout=60,
                poll_interval=0.2,
                listen=True,
            )
            for n, sessions in enumerate(makers)
        ]
        with running(workers[0]) as first, running(workers[1]) as second:
            wait_until(lambda: sum(calls.values()) >= 10, what="work under way")
            restartable_pg.stop()
            try:
                # Several failed attempts: the workers keep retrying while it is down.
                wait_until(
                    lambda: len(worker_logs.matching("failed", level=30)) >= 4,
                    timeout=30,
                    what="workers retrying through the outage",
                )
                assert first.thread.is_alive() and second.thread.is_alive()
            finally:
                restartable_pg.start()
            wait_until(
                lambda: count_status(makers[0], RetryStatus.COMPLETED) == ITEMS,
                timeout=60,
                what="all items completed after the restart",
            )
            reports = [first.stop(), second.stop()]

        assert sum(r.completed for r in reports) == ITEMS, reports
        assert all(r.completed > 0 for r in reports), reports  # both took part
        assert sum(r.lost for r in reports) == 0
        assert set(calls) == set(ids)
        assert max(calls.values()) == 1, "a handler ran twice"
        with makers[0]() as session:
            per_item = Counter(
                session.scalars(
                    select(RetryHistory.retry_queue_id).where(RetryHistory.status == "completed")
                )
            )
            assert session.scalar(select(func.count()).select_from(RetryHistory)) == ITEMS
        assert per_item == Counter(dict.fromkeys(ids, 1))
