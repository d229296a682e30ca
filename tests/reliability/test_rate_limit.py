"""A shared rate limit: 4 worker processes (2 thread, 2 asyncio) on PostgreSQL, one key
limited to 50/s (burst 10), 2,000 of its items and 2,000 of another key. The limited key's
claims never exceed the limit plus burst in any 1-second window; the other key drains at
full speed meanwhile (it is done while most of the limited key still waits)."""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from datetime import datetime

import pytest
from sqlalchemy import select
from sqlalchemy.engine import URL

from retryqueue import NewItem, RetryQueue, RetryStatus
from retryqueue.models import RetryHistory, RetryItem
from tests.reliability.fleet import Database, Fleet, wait_all_terminal

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

RATE = 50.0
BURST = 10.0
STAMP_LAG = 0.1  # seconds a claim's stamp may trail the bucket's clock reading (see below)
LIMITED = 2_000
FREE = 2_000


def busiest_second(stamps: list[datetime]) -> int:
    """The most stamps in any 1-second window [t, t + 1 s) (windows start at a stamp)."""
    seconds = sorted(stamp.timestamp() for stamp in stamps)
    return max(
        bisect.bisect_left(seconds, start + 1.0) - index for index, start in enumerate(seconds)
    )


class TestSharedRateLimit:
    """Four processes share one token bucket per key."""

    def test_four_processes_respect_fifty_per_second(
        self, dedicated_db: Database, make_fleet: Callable[[URL], Fleet]
    ) -> None:
        queue = RetryQueue()
        with dedicated_db.sessions.begin() as session:
            queue.set_limit(session, "limited", RATE, burst=BURST)
        fleet = make_fleet(dedicated_db.url)
        workers = fleet.start_ready("thread", 2, batch_size=20, poll=0.5)
        workers += fleet.start_ready("async", 2, batch_size=20, poll=0.5, asyncio=True)

        started = time.monotonic()
        with dedicated_db.sessions.begin() as session:  # interleaved, one transaction
            queue.enqueue_many(
                session,
                [
                    NewItem("rel.work", {"n": n}, plugin_name=plugin, retry_delay_seconds=0)
                    for n in range(max(LIMITED, FREE))
                    for plugin, count in (("limited", LIMITED), ("free", FREE))
                    if n < count
                ],
            )
        wait_all_terminal(
            dedicated_db.engine, LIMITED + FREE, timeout=LIMITED / RATE * 4 + 60, what="drained"
        )
        duration = time.monotonic() - started
        reports = [worker.terminate() for worker in workers]

        with dedicated_db.sessions() as session:
            rows = session.execute(
                select(
                    RetryItem.plugin_name,
                    RetryItem.status,
                    RetryItem.retry_count,
                    RetryItem.last_attempted_at,
                    RetryHistory.attempted_at,
                ).join(RetryHistory, RetryHistory.retry_queue_id == RetryItem.id)
            ).all()
            (limit,) = queue.key_limits(session)
        assert len(rows) == LIMITED + FREE  # one history row each: one attempt, completed
        assert all(row.status is RetryStatus.COMPLETED and row.retry_count == 0 for row in rows)
        claims = {
            plugin: sorted(row.last_attempted_at for row in rows if row.plugin_name == plugin)
            for plugin in ("limited", "free")
        }
        completions = sorted(row.attempted_at for row in rows if row.plugin_name == "limited")
        busiest_claims = busiest_second(claims["limited"])
        busiest_completions = busiest_second(completions)
        limited_span = (claims["limited"][-1] - claims["limited"][0]).total_seconds()
        free_span = (claims["free"][-1] - claims["free"][0]).total_seconds()
        limited_when_free_done = bisect.bisect_right(claims["limited"], claims["free"][-1])
        print(
            f"\nrate limit {RATE:g}/s burst {BURST:g}, 4 processes: drained in {duration:.1f}s; "
            f"limited key: {LIMITED} claims over {limited_span:.1f}s "
            f"({(LIMITED - 1) / limited_span:.1f}/s), busiest 1-s window {busiest_claims} claims, "
            f"{busiest_completions} completions; other key: {FREE} over {free_span:.1f}s "
            f"({FREE / max(free_span, 1e-3):.0f}/s), done when {limited_when_free_done} of the "
            f"limited key had been claimed; throttled claims {limit.throttled_claims}; "
            f"reports {reports}"
        )
        # The bucket spends tokens on its clock reading; each claim is stamped when its row
        # is locked, a few ms later and not by the same amount for every claim. A 1-second
        # window of stamps so spans at most 1 s + STAMP_LAG of the bucket's time.
        assert busiest_claims <= RATE * (1 + STAMP_LAG) + BURST
        assert limited_when_free_done < LIMITED / 2  # the other key did not wait for it
        assert limit.throttled_claims > 0
