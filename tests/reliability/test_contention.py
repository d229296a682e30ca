"""Contention: 8 worker processes drain 20,000 items; each is handled and completed once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest
from sqlalchemy.engine import URL

from retryqueue import RetryStatus
from tests.reliability.fleet import (
    Database,
    Fleet,
    enqueue_work,
    executions_by_item,
    final_states,
    history_by_item,
    wait_all_terminal,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

PROCESSES = 8
ITEMS = 20_000


class TestContention:
    """Many processes racing for the same rows never share an item and never drop one."""

    @pytest.mark.parametrize("kind", ["threads", "asyncio"])
    def test_eight_processes_complete_twenty_thousand_items_exactly_once(
        self, dedicated_db: Database, make_fleet: Callable[[URL], Fleet], kind: str
    ) -> None:
        fleet = make_fleet(dedicated_db.url)
        options = {"batch_size": 20, "poll": 0.5, "asyncio": kind == "asyncio"}
        workers = fleet.start_ready("contend", PROCESSES, **options)

        started = time.monotonic()
        # Enqueued while the workers already run: they race for rows as they arrive.
        enqueue_work(dedicated_db.sessions, range(ITEMS))
        wait_all_terminal(dedicated_db.engine, ITEMS, timeout=240, what="20,000 items drained")
        duration = time.monotonic() - started
        reports = {worker.name: worker.terminate() for worker in workers}

        states = final_states(dedicated_db.engine)
        assert len(states) == ITEMS
        assert sorted(state.n for state in states.values()) == list(range(ITEMS))  # none lost
        assert Counter(state.status for state in states.values()) == {RetryStatus.COMPLETED: ITEMS}
        assert all(s.retry_count == 0 and s.locked_by is None for s in states.values())

        # The queue's record: one history row per item, a completion on the first attempt.
        history = history_by_item(dedicated_db.engine)
        assert set(history) == set(states)
        completers = {}
        for item_id, rows in history.items():
            assert [(attempt, status) for attempt, status, _ in rows] == [(1, "completed")], (
                item_id,
                rows,
            )
            completers[item_id] = rows[0][2]

        # The handlers' own record: each item ran once, in the process that completed it.
        runs = executions_by_item(fleet.executions())
        assert set(runs) == set(states)
        doubles = {item_id: r for item_id, r in runs.items() if len(r) != 1}
        assert not doubles, f"{len(doubles)} items handled more than once: {list(doubles)[:5]}"
        assert all(r[0].worker == completers[item_id] for item_id, r in runs.items())

        per_worker = {name: report["completed"] for name, report in reports.items()}
        assert sum(per_worker.values()) == ITEMS
        assert sum(report["lost"] for report in reports.values()) == 0
        assert all(per_worker.values()), f"some process never got an item: {per_worker}"
        print(
            f"\n[reliability] contention: processes={PROCESSES} items={ITEMS} "
            f"completed={ITEMS} handled_twice=0 lost=0 "
            f"per_process_min={min(per_worker.values())} max={max(per_worker.values())} "
            f"duration={duration:.1f}s rate={ITEMS / duration:.0f}/s"
        )
