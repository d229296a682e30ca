"""Workers through PgBouncer in transaction-pooling mode: no session state relied upon.

Each transaction of a client may run on a different server connection, so nothing may
outlive a transaction on the server: prepared statements (psycopg prepares after five
executions), LISTEN, SET, advisory locks. retryqueue uses none of them through such a
pool: ``create_engine(url, pgbouncer=True)`` turns psycopg's server-side prepares off and
keeps the worker from LISTENing through it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from retryqueue import RetryQueue, RetryStatus, create_engine
from retryqueue.models import RetryHistory, RetryItem
from retryqueue.worker import Job, Worker
from retryqueue.worker.listener import supports_listen
from tests.reliability.fleet import (
    Fleet,
    count_items,
    enqueue_work,
    executions_by_item,
    final_states,
    history_by_item,
    wait_all_terminal,
)
from tests.reliability.worker_script import predicted_attempts
from tests.scaleout.conftest import DIRECT, POOL_SIZE, BouncedDatabase
from tests.support.pgbouncer import PgBouncer
from tests.support.waiting import wait_until
from tests.worker.conftest import LogRecorder, running

pytestmark = [pytest.mark.postgres]

PROCESSES = 6  # x 2 connections each: 12 clients on POOL_SIZE server connections
ITEMS = 3_000
FAIL_PERCENT = 20
SLOW_ITEMS = 4
SLOW_MS = 4_000  # longer than LOCK_TIMEOUT: only heartbeats keep these leases
LOCK_TIMEOUT = 3.0
HEARTBEAT = 0.5


def max_retries_of(n: int) -> int:
    """Items carry 0 to 3 retries, so some dead-letter and some succeed late."""
    return n % 4


@contextmanager
def peak_server_connections(direct: Engine, database: str) -> Iterator[list[int]]:
    """Sample PgBouncer's server sessions on the database (every 50 ms) during the block."""
    samples: list[int] = []
    done = threading.Event()
    # Client backends only: an autovacuum worker on the busy database is no PgBouncer link.
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = :name"
        " AND backend_type = 'client backend' AND application_name <> :me"
    )

    def sample() -> None:
        with direct.connect() as connection:
            while not done.wait(0.05):
                row = connection.execute(query, {"name": database, "me": DIRECT})
                samples.append(int(row.scalar_one()))
                connection.rollback()

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        done.set()
        thread.join(5)


class TestEngine:
    """``create_engine(url, pgbouncer=True)`` is what makes transaction pooling safe."""

    @pytest.mark.parametrize("behind_pgbouncer", [False, True])
    def test_a_prepared_statement_reaching_another_server_fails_unless_pgbouncer_is_set(
        self, bounced_db: BouncedDatabase, behind_pgbouncer: bool
    ) -> None:
        engine = create_engine(bounced_db.bounced_url, pgbouncer=behind_pgbouncer)
        other = create_engine(bounced_db.bounced_url, pgbouncer=True)
        count = select(func.count()).select_from(RetryItem)
        try:
            with engine.connect() as mine, other.connect() as theirs:
                for _ in range(7):  # psycopg prepares on the 6th execution by default
                    mine.execute(count)
                    mine.commit()  # each transaction may get any server connection
                theirs.execute(text("SELECT 1"))  # holds the only server connection so far
                if behind_pgbouncer:
                    assert mine.execute(count).scalar_one() == 0  # runs on a new server
                else:
                    with pytest.raises(DBAPIError, match="prepared statement"):
                        mine.execute(count)
        finally:
            engine.dispose()
            other.dispose()

    def test_no_server_side_prepares_and_no_listen_through_pgbouncer(
        self, bounced_db: BouncedDatabase
    ) -> None:
        with bounced_db.bounced.connect() as connection:
            assert connection.connection.driver_connection.prepare_threshold is None  # type: ignore[union-attr]
        with bounced_db.direct.connect() as connection:
            assert connection.connection.driver_connection.prepare_threshold == 5  # type: ignore[union-attr]
        assert not supports_listen(bounced_db.bounced)
        assert supports_listen(bounced_db.direct)


class TestWorkers:
    """Worker processes share a PgBouncer pool smaller than their connection count."""

    @pytest.mark.slow
    def test_processes_drain_retry_heartbeat_and_clean_up_through_pgbouncer(
        self,
        bounced_db: BouncedDatabase,
        pgbouncer: PgBouncer,
        make_fleet: Callable[[URL], Fleet],
    ) -> None:
        fleet = make_fleet(bounced_db.bounced_url)
        workers = [
            fleet.start(
                f"bounced-{n}",
                batch_size=10,
                lock_timeout=LOCK_TIMEOUT,
                heartbeat=HEARTBEAT,
                poll=0.2,
                pgbouncer=True,  # listen stays on: the worker must fall back to polling
            )
            for n in range(PROCESSES)
        ]
        fleet.wait_ready(workers)
        database = str(bounced_db.direct_url.database)
        total = ITEMS + SLOW_ITEMS
        with peak_server_connections(bounced_db.direct, database) as connections:
            started = time.monotonic()
            # Enqueued through PgBouncer while the workers already poll.
            enqueue_work(
                bounced_db.sessions,
                range(ITEMS),
                max_retries=max_retries_of,
                fail_percent=FAIL_PERCENT,
            )
            enqueue_work(bounced_db.sessions, range(ITEMS, total), max_retries=0, work_ms=SLOW_MS)
            wait_all_terminal(bounced_db.direct, total, timeout=240, what="items drained")
            duration = time.monotonic() - started
        reports = [worker.terminate() for worker in workers]

        states = final_states(bounced_db.direct)
        history = history_by_item(bounced_db.direct)
        runs = executions_by_item(fleet.executions())
        assert sorted(state.n for state in states.values()) == list(range(total))
        outcomes: Counter[str] = Counter()
        for item_id, state in states.items():
            retries = max_retries_of(state.n) if state.n < ITEMS else 0
            percent = FAIL_PERCENT if state.n < ITEMS else 0
            attempts, completes = predicted_attempts(
                state.n, retries, fail_percent=percent, always_fail=False
            )
            last = "completed" if completes else "dead_lettered"
            expected = [(a, "retry_scheduled") for a in range(1, attempts)] + [(attempts, last)]
            where = f"item {item_id} (n={state.n})"
            assert state.status is (RetryStatus.COMPLETED if completes else RetryStatus.DEAD_LETTER)
            assert [(a, s) for a, s, _ in history[item_id]] == expected, where
            assert sorted(r.attempt for r in runs[item_id]) == list(range(1, attempts + 1)), where
            outcomes[last] += 1
        # The slow items outlived lock_timeout on heartbeats alone: nobody took them over.
        totals = {key: sum(report[key] for report in reports) for key in reports[0]}
        assert totals["lost"] == 0
        assert totals["completed"] == outcomes["completed"]
        assert totals["dead_lettered"] == outcomes["dead_lettered"] > 0
        assert max(connections) <= POOL_SIZE, connections
        print(
            f"\n[pgbouncer] processes={PROCESSES} (2 connections each) "
            f"pool_size={POOL_SIZE} items={total} outcomes={dict(outcomes)} "
            f"peak_server_connections={max(connections)} duration={duration:.1f}s"
        )

        # Monitoring and cleanup through PgBouncer too.
        queue = RetryQueue()
        with bounced_db.sessions() as session:
            stats = {row.status: row.count for row in queue.stats(session)}
            assert sum(stats.values()) == total
            removed = 0
            for part in queue.iter_cleanup(session, retention_days=0):
                session.commit()  # one short transaction per batch, as in production
                removed += part.deleted_count
        assert removed == total
        assert count_items(bounced_db.direct) == 0
        with bounced_db.direct.connect() as connection:
            assert connection.scalar(select(func.count()).select_from(RetryHistory)) == 0

    def test_a_worker_asked_to_listen_polls_through_pgbouncer(
        self, bounced_db: BouncedDatabase
    ) -> None:
        handled = threading.Event()
        worker = Worker(
            RetryQueue(),
            bounced_db.sessions,
            {"wake.up": lambda job: handled.set()},
            poll_interval=0.2,
            listen=True,
        )
        with running(worker) as handle:
            with bounced_db.sessions.begin() as session:
                RetryQueue().enqueue(session, "wake.up", {})
            assert handled.wait(15)
            listeners = [t for t in threading.enumerate() if t.name == "retryqueue-listener"]
            assert listeners == []
            handle.stop()


class TestListenOnADirectConnection:
    """Enqueue through PgBouncer wakes a worker that LISTENs on a direct connection."""

    def test_enqueue_through_pgbouncer_wakes_a_worker_listening_directly(
        self, bounced_db: BouncedDatabase, worker_logs: LogRecorder
    ) -> None:
        handled = threading.Event()

        def handle(job: Job) -> None:
            handled.set()

        poll = 30.0
        worker = Worker(
            RetryQueue(),
            bounced_db.sessions,
            {"wake.up": handle},
            poll_interval=poll,
            listen_engine=bounced_db.direct,
        )
        with running(worker) as running_worker:
            wait_until(lambda: worker_logs.matching("idle for up to"), what="worker idle")
            began = time.monotonic()
            with bounced_db.sessions.begin() as session:  # NOTIFY sent on commit
                RetryQueue().enqueue(session, "wake.up", {})
            assert handled.wait(poll / 3), "the NOTIFY did not wake the worker"
            print(f"\n[pgbouncer] woken by NOTIFY after {time.monotonic() - began:.3f}s")
            running_worker.stop()
