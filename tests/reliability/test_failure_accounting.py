"""Failure accounting: with ~10 % of attempts failing, every item ends as the policy says."""

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
from tests.reliability.worker_script import predicted_attempts

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

PROCESSES = 4
ITEMS = 5_000
FAIL_PERCENT = 10
ALWAYS_FAILING_EVERY = 37  # items 0, 37, 74, ... fail on every attempt (37: coprime to 5)


def always_fails(n: int) -> bool:
    """Whether item number ``n`` is one that never succeeds."""
    return n % ALWAYS_FAILING_EVERY == 0


def max_retries_of(n: int) -> int:
    """Items get 0 to 4 retries, so every limit of the policy is exercised."""
    return n % 5


class TestFailureAccounting:
    """Retries, dead letters and history rows add up to exactly what the policy predicts."""

    @pytest.mark.parametrize("kind", ["threads", "asyncio"])
    def test_every_item_ends_in_the_predicted_state_with_one_history_row_per_attempt(
        self, dedicated_db: Database, make_fleet: Callable[[URL], Fleet], kind: str
    ) -> None:
        fleet = make_fleet(dedicated_db.url)
        options = {"batch_size": 20, "poll": 0.5, "asyncio": kind == "asyncio"}
        workers = fleet.start_ready("failing", PROCESSES, **options)

        started = time.monotonic()
        for always in (False, True):
            enqueue_work(
                dedicated_db.sessions,
                [n for n in range(ITEMS) if always_fails(n) == always],
                max_retries=max_retries_of,
                fail_percent=FAIL_PERCENT,
                always_fail=always,
            )
        wait_all_terminal(dedicated_db.engine, ITEMS, timeout=180, what="all items terminal")
        duration = time.monotonic() - started
        reports = [worker.terminate() for worker in workers]

        states = final_states(dedicated_db.engine)
        history = history_by_item(dedicated_db.engine)
        runs = executions_by_item(fleet.executions())
        assert sorted(state.n for state in states.values()) == list(range(ITEMS))
        outcomes: Counter[str] = Counter()
        total_attempts = 0
        for item_id, state in states.items():
            attempts, completes = predicted_attempts(
                state.n,
                max_retries_of(state.n),
                fail_percent=FAIL_PERCENT,
                always_fail=always_fails(state.n),
            )
            total_attempts += attempts
            expected_status = RetryStatus.COMPLETED if completes else RetryStatus.DEAD_LETTER
            last = "completed" if completes else "dead_lettered"
            expected_rows = [(a, "retry_scheduled") for a in range(1, attempts)]
            expected_rows.append((attempts, last))
            where = f"item {item_id} (n={state.n}, max_retries={state.max_retries})"
            assert state.status is expected_status, where
            assert state.retry_count == attempts - 1, where
            assert state.locked_by is None, where
            assert [(a, s) for a, s, _ in history[item_id]] == expected_rows, where
            # The handler itself ran once per attempt, attempt numbers in order.
            assert sorted(r.attempt for r in runs[item_id]) == list(range(1, attempts + 1)), where
            outcomes[f"{expected_status.value} after {attempts - 1} retries"] += 1
        assert set(runs) == set(states)

        totals = {key: sum(report[key] for report in reports) for key in reports[0]}
        assert totals["acquired"] == total_attempts
        assert totals["completed"] + totals["dead_lettered"] == ITEMS
        assert totals["retried"] == total_attempts - ITEMS
        assert totals["lost"] == totals["failed"] == 0
        dead = sum(count for name, count in outcomes.items() if name.startswith("dead_letter"))
        assert totals["dead_lettered"] == dead >= ITEMS // ALWAYS_FAILING_EVERY
        print(
            f"\n[reliability] failure accounting: processes={PROCESSES} items={ITEMS} "
            f"attempts={total_attempts} failed_attempts={total_attempts - (ITEMS - dead)} "
            f"completed={ITEMS - dead} dead_letter={dead} "
            f"outcomes={dict(sorted(outcomes.items()))} duration={duration:.1f}s"
        )
