"""Crashes: worker processes SIGKILLed mid-batch, again and again; nothing lost or done twice.

Execution is at-least-once: a handler killed before its outcome was recorded runs again
after lock_timeout. What must never happen is a second *recorded* success, an item left
behind, or a handler run twice under one lease.
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import URL

from retryqueue import RetryStatus
from retryqueue.models import RetryItem
from tests.reliability.fleet import (
    Database,
    Fleet,
    WorkerProcess,
    count_items,
    enqueue_work,
    executions_by_item,
    final_states,
    history_by_item,
    wait_all_terminal,
)
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

PROCESSES = 4
KILLS = 12
SEED = 20261128
FIRST_ITEMS = 2_000
TOP_UP = 500  # more items whenever fewer than LOW_WATER are pending: work never runs out
LOW_WATER = 600
PROGRESS = 50  # completions between two kills: the survivors keep working
MAX_RETRIES = 3 * KILLS  # each kill costs an item at most one attempt: none dead-letters
WORKER_OPTIONS = {
    "batch_size": 10,
    "concurrency": 2,
    "lock_timeout": 2,
    "heartbeat": 0.5,
    "poll": 0.2,
}


def lock_holders(engine: Engine) -> Counter[str]:
    """Items in processing per worker id."""
    stmt = select(RetryItem.locked_by).where(RetryItem.status == RetryStatus.PROCESSING)
    with engine.connect() as connection:
        return Counter(connection.scalars(stmt))


def sessions_of(engine: Engine, worker: str) -> int:
    """Server sessions still open for a worker process (its application_name, see the
    fleet)."""
    stmt = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name")
    with engine.connect() as connection:
        return int(connection.scalar(stmt, {"name": worker}) or 0)


class TestCrashes:
    """Every item of a run with a dozen SIGKILLs completes, once, as recorded."""

    @pytest.mark.parametrize("kind", ["threads", "asyncio"])
    def test_sigkilled_workers_lose_nothing_and_never_complete_twice(
        self, dedicated_db: Database, make_fleet: Callable[[URL], Fleet], kind: str
    ) -> None:
        engine, rng = dedicated_db.engine, random.Random(SEED)
        fleet = make_fleet(dedicated_db.url)
        spawned = 0

        def spawn() -> WorkerProcess:
            nonlocal spawned
            spawned += 1
            return fleet.start(f"crashy-{spawned}", asyncio=kind == "asyncio", **WORKER_OPTIONS)

        slots = [spawn() for _ in range(PROCESSES)]
        fleet.wait_ready(slots)
        started = time.monotonic()
        enqueued = 0

        def feed() -> None:
            """Keep work queued while the killing goes on: a kill must hit a busy worker."""
            nonlocal enqueued
            if enqueued and count_items(engine, RetryStatus.PENDING) >= LOW_WATER:
                return
            batch = FIRST_ITEMS if not enqueued else TOP_UP
            numbers = range(enqueued, enqueued + batch)
            enqueue_work(dedicated_db.sessions, numbers, max_retries=MAX_RETRIES, work_ms=5)
            enqueued += batch

        def holding(holders: list[str]) -> Callable[[], bool]:
            """A condition: some live, started worker holds items (names into holders)."""

            def check() -> bool:
                feed()
                live = {w.name for w in slots if w.alive() and w.ready() is not None}
                holders[:] = sorted(set(lock_holders(engine)) & live)
                return bool(holders)

            return check

        def progressed(before: int) -> Callable[[], bool]:
            """A condition: the surviving workers completed more items since ``before``."""
            return lambda: count_items(engine, RetryStatus.COMPLETED) >= before + PROGRESS

        killed: list[WorkerProcess] = []
        held_when_killed: dict[str, int] = {}
        for _ in range(KILLS):
            holders: list[str] = []
            wait_until(holding(holders), timeout=60, what="a worker holding items")
            chosen = rng.choice(holders)
            victim = next(w for w in slots if w.name == chosen)
            victim.kill()
            killed.append(victim)
            # A statement it had sent still runs to its end on the server (an autocommitted
            # flush completes and claims even though nobody reads its answer): wait until
            # its sessions are gone. Its rows then stay locked by it until reclaimed: what
            # it held when it died.
            wait_until(
                lambda name=victim.name: not sessions_of(engine, name),
                timeout=30,
                what="the killed worker's sessions to end",
            )
            held_when_killed[victim.name] = lock_holders(engine)[victim.name]
            slots[slots.index(victim)] = spawn()
            feed()
            before = count_items(engine, RetryStatus.COMPLETED)
            wait_until(progressed(before), timeout=60, what="the survivors making progress")

        fleet.wait_ready(slots)
        wait_all_terminal(engine, enqueued, timeout=120, what="every item terminal after kills")
        duration = time.monotonic() - started
        for worker in slots:
            worker.terminate()

        assert len(killed) == KILLS
        assert all(w.process.returncode == -signal.SIGKILL for w in killed)
        mid_batch = [name for name, held in held_when_killed.items() if held]
        assert mid_batch, "no kill hit a worker holding items: the test tested nothing"

        states = final_states(engine)
        assert sorted(state.n for state in states.values()) == list(range(enqueued))
        assert Counter(state.status for state in states.values()) == {
            RetryStatus.COMPLETED: enqueued
        }
        history = history_by_item(engine)
        runs = executions_by_item(fleet.executions())
        expired_by: Counter[str] = Counter()
        for item_id, state in states.items():
            rows = history[item_id]
            attempts = len(rows)
            # lock_expired for every killed attempt, then one completion; nothing else.
            assert [(a, s) for a, s, _ in rows] == [
                *((a, "lock_expired") for a in range(1, attempts)),
                (attempts, "completed"),
            ], (item_id, rows)
            assert state.retry_count == attempts - 1
            expired_by.update(worker for _, status, worker in rows if status == "lock_expired")
            ran = Counter(run.attempt for run in runs.get(item_id, []))
            assert all(count == 1 for count in ran.values()), (item_id, "twice in one lease")
            assert set(ran) <= set(range(1, attempts + 1)), (item_id, ran, rows)
            assert attempts in ran, (item_id, "completed without its handler running")
        # Each killed worker's held items were reclaimed under its name.
        assert all(expired_by[name] >= held_when_killed[name] for name in mid_batch)

        reexecuted = {item_id: len(r) - 1 for item_id, r in runs.items() if len(r) > 1}
        print(
            f"\n[reliability] crashes: processes={PROCESSES} spawned={spawned} "
            f"kills={KILLS} kills_mid_batch={len(mid_batch)} items={enqueued} "
            f"completed={enqueued} lost=0 double_completions=0 "
            f"lock_expired_attempts={sum(expired_by.values())} "
            f"reexecuted_items={len(reexecuted)} reexecutions={sum(reexecuted.values())} "
            f"duration={duration:.1f}s"
        )
