"""PostgreSQL stopped and started under running worker processes: they ride it out.

The server is a dedicated embedded one that this module starts, stops and starts again;
with ``RETRYQUEUE_TEST_POSTGRES_URL`` set the module is skipped (it cannot restart a server
it does not own).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import sessionmaker

from retryqueue import RetryStatus, create_engine, migrations
from tests.reliability.fleet import (
    Fleet,
    WorkerProcess,
    count_items,
    enqueue_work,
    executions_by_item,
    final_states,
    history_by_item,
    wait_all_terminal,
)
from tests.support.restartable import RestartablePostgres, restartable_postgres
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

PROCESSES = 4
ITEMS = 3_000
RESTART_AFTER = 500  # completions before the server is stopped
OUTAGE_SIGNS = ("database unavailable", "recording outcomes failed", "heartbeat failed")


def outage_failures(worker: WorkerProcess) -> int:
    """How many database operations the worker logged as failed so far."""
    return sum(worker.stderr().count(sign) for sign in OUTAGE_SIGNS)


@pytest.fixture(scope="module")
def restartable_pg() -> Iterator[RestartablePostgres]:
    """A PostgreSQL server of this module's own."""
    with restartable_postgres() as server:
        yield server


@pytest.fixture
def restart_engine(restartable_pg: RestartablePostgres) -> Iterator[Engine]:
    """An engine on a migrated database of the restartable server."""
    engine = create_engine(restartable_pg.server.create_database("rq_restart"))
    try:
        migrations.upgrade(engine)
        yield engine
    finally:
        engine.dispose()


class TestDatabaseRestart:
    """A restart costs the workers time, never an item, a completion or their lives."""

    def test_worker_processes_survive_a_restart_and_complete_everything_once(
        self,
        restartable_pg: RestartablePostgres,
        restart_engine: Engine,
        make_fleet: Callable[[URL], Fleet],
    ) -> None:
        engine = restart_engine
        fleet = make_fleet(engine.url)
        # lock_timeout well beyond the outage: a lease outlives it and nothing is reclaimed.
        workers = [
            fleet.start(f"restart-{n}", batch_size=10, lock_timeout=30, poll=0.5)
            for n in range(PROCESSES)
        ]
        fleet.wait_ready(workers)
        pids = {worker.name: worker.ready()["pid"] for worker in workers}  # type: ignore[index]
        started = time.monotonic()
        enqueue_work(sessionmaker(engine), range(ITEMS), work_ms=5)
        wait_until(
            lambda: count_items(engine, RetryStatus.COMPLETED) >= RESTART_AFTER,
            timeout=120,
            what="work under way",
        )
        completed_before = count_items(engine, RetryStatus.COMPLETED)
        assert completed_before < ITEMS, "drained before the restart: nothing was mid-run"
        engine.dispose()  # the test's own pooled connections die with the server

        restartable_pg.stop()
        try:
            # Down until every worker has failed twice: it keeps retrying, it did not just
            # miss a blip (a stop and a start take a fraction of a second each).
            for worker in workers:
                wait_until(
                    lambda worker=worker: outage_failures(worker) >= 2,
                    timeout=60,
                    what=f"{worker.name} failing twice during the outage",
                )
            failures = {worker.name: outage_failures(worker) for worker in workers}
        finally:
            restartable_pg.start()
        restarted_at = time.monotonic()
        wait_all_terminal(engine, ITEMS, timeout=180, what="all items after the restart")
        duration = time.monotonic() - started
        recovery = time.monotonic() - restarted_at

        # Workers survived: the same processes still run, and stop cleanly when asked.
        assert all(worker.alive() for worker in workers), [w.stderr()[-2000:] for w in workers]
        assert {w.name: w.pid for w in workers} == pids
        reports = {worker.name: worker.terminate() for worker in workers}

        states = final_states(engine)
        assert sorted(state.n for state in states.values()) == list(range(ITEMS))
        assert Counter(state.status for state in states.values()) == {RetryStatus.COMPLETED: ITEMS}
        history = history_by_item(engine)
        completions = Counter(
            item_id for item_id, rows in history.items() for _, s, _ in rows if s == "completed"
        )
        assert completions == Counter(dict.fromkeys(states, 1)), "lost or double completions"
        runs = executions_by_item(fleet.executions())
        assert set(runs) == set(states)
        for item_id, rows in history.items():
            # Any extra handler run must be explained by a reclaimed (expired) lease.
            assert len(runs[item_id]) <= len(rows), (item_id, runs[item_id], rows)
        reexecutions = sum(len(r) - 1 for r in runs.values())
        assert sum(report["completed"] for report in reports.values()) <= ITEMS
        print(
            f"\n[reliability] database restart: processes={PROCESSES} items={ITEMS} restarts=1 "
            f"completed_before_stop~{completed_before} completed={ITEMS} lost=0 "
            f"double_completions=0 reexecutions={reexecutions} "
            f"lost_leases={sum(r['lost'] for r in reports.values())} "
            f"failures_during_outage={failures} recovery={recovery:.1f}s "
            f"duration={duration:.1f}s"
        )
