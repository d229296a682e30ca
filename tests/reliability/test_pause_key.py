"""A pause shared by worker processes: a handler answered "429, Retry-After: 30" pauses its
key for every process (a thread and an asyncio worker), no attempt is counted, and the
operator's resume lets the key's other items run at once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import URL

from retryqueue import NewItem, RetryQueue, RetryStatus
from retryqueue.limits import PRESENCE_TTL
from retryqueue.models import RetryHistory, RetryItem
from tests.reliability.fleet import Database, Fleet, wait_all_terminal
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


class TestSharedPause:
    """One handler's 429 stops every process from calling the destination."""

    def test_429_pauses_the_key_for_every_process(
        self, dedicated_db: Database, make_fleet: Callable[[URL], Fleet], tmp_path: Path
    ) -> None:
        queue, sessions = RetryQueue(), dedicated_db.sessions
        gate = tmp_path / "crm-open"
        fleet = make_fleet(dedicated_db.url)
        workers = fleet.start_ready("thread", 1, poll=0.5)
        workers += fleet.start_ready("async", 1, poll=0.5, asyncio=True)
        with sessions.begin() as session:
            (news,) = queue.enqueue_many(
                session,
                [
                    NewItem(
                        "rel.saturated",
                        {"open": str(gate), "retry_after": 30},
                        plugin_name="crm",
                        max_retries=0,
                    )
                ],
            )

        def paused() -> bool:
            with sessions() as session:
                return [row.key for row in queue.key_limits(session)] == ["crm"]

        wait_until(paused, timeout=60, what="the crm key to be paused")
        # Another process may trust its last look for PRESENCE_TTL seconds (the documented
        # propagation bound); no condition of another process's cache can be awaited.
        time.sleep(PRESENCE_TTL + 0.5)
        with sessions.begin() as session:
            held = queue.enqueue_many(
                session,
                [
                    NewItem(
                        "rel.saturated", {"open": str(gate), "retry_after": 30}, plugin_name="crm"
                    )
                    for _ in range(20)
                ]
                + [NewItem("rel.work", {"n": n}, plugin_name="mail") for n in range(20)],
            )
        wait_until(
            lambda: all(
                status is RetryStatus.COMPLETED
                for status in statuses(dedicated_db, [item.id for item in held[20:]])
            ),
            timeout=60,
            what="the other key's items to complete",
        )
        crm_ids = [news.id] + [item.id for item in held[:20]]
        assert [run.item_id for run in fleet.executions() if run.item_id in crm_ids] == [news.id]
        with sessions() as session:
            rows = session.execute(
                select(RetryItem.id, RetryItem.status, RetryItem.retry_count).where(
                    RetryItem.id.in_(crm_ids)
                )
            ).all()
        assert all(row.status is RetryStatus.PENDING and row.retry_count == 0 for row in rows)

        gate.touch()  # the destination recovers; the operator lifts the pause
        with sessions.begin() as session:
            queue.resume_key(session, "crm")
        # The held items run at once; the item that carried the news keeps its own
        # Retry-After (due 30 s after it ran).
        wait_all_terminal(dedicated_db.engine, 41, timeout=120, what="everything done")
        reports = [worker.terminate() for worker in workers]
        with sessions() as session:
            trail = session.execute(
                select(RetryHistory.status, RetryHistory.attempt_number)
                .where(RetryHistory.retry_queue_id == news.id)
                .order_by(RetryHistory.id)
            ).all()
        assert [tuple(row) for row in trail] == [("paused", 1), ("completed", 1)]
        assert sum(report["paused"] for report in reports) == 1
        print(f"\npause shared by 2 processes: reports {reports}")


def statuses(db: Database, ids: list[int]) -> list[RetryStatus]:
    with db.sessions() as session:
        return list(session.scalars(select(RetryItem.status).where(RetryItem.id.in_(ids))))
