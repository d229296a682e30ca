"""What rate limits cost the claim (group ``limits``).

The same seeded backlog (plugin ``bench``), claimed in batches of 10 by one process, each
batch completed and committed; the acquire call's time per round, in four modes taken in
turn, round after round (so that the machine's noise falls on all of them alike):

* ``as-before``: the limits feature bypassed (the claim statement alone, as before the
  feature existed);
* ``idle``: the feature on, no limit or pause stored (one presence look per second);
* ``unrelated-limit``: a limit on a key no item has (two reads, one write-free bucket);
* ``limited-key``: a limit on the claimed key, high enough never to bind (two reads, one
  claim for the key, one for the rest, one bucket write).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg
from sqlalchemy import create_engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from benchmarks import seed
from benchmarks.harness import Figure, percentile
from retryqueue.queue import RetryQueue

MODES = ("as-before", "idle", "unrelated-limit", "limited-key")


def _setup(sessions: sessionmaker[Session], dsn: str, mode: str) -> RetryQueue:
    queue = RetryQueue()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM daz_retry_limits")
    if mode == "as-before":
        bypass: Callable[[Session, Any], bool] = lambda session, at: False  # noqa: E731
        queue.limit_presence.active = bypass  # type: ignore[method-assign]
    elif mode == "unrelated-limit":
        with sessions.begin() as session:
            queue.set_limit(session, "elsewhere", 50, burst=50)
    elif mode == "limited-key":
        with sessions.begin() as session:
            queue.set_limit(session, "bench", 1_000_000, burst=1_000_000)
    return queue


def claim_cost(url: URL, dsn: str, rounds: int, batch_size: int = 10) -> list[Figure]:
    """Acquire latency per mode; each mode gets ``rounds`` rounds, interleaved."""
    seed.reset(dsn)
    seed.seed(dsn, rounds * batch_size * len(MODES) + batch_size)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE daz_retry_queue SET plugin_name = 'bench'")
        conn.execute("ANALYZE daz_retry_queue")
    engine = create_engine(url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    try:
        for start in range(0, rounds, 50):
            for mode in MODES:  # in blocks of 50 rounds: a mode's setup is not free
                queue = _setup(sessions, dsn, mode)
                for _ in range(min(50, rounds - start)):
                    with sessions.begin() as session:
                        began = time.perf_counter()
                        claimed = queue.acquire(session, "bench-limits", batch_size)
                        times[mode].append(1000 * (time.perf_counter() - began))
                        queue.complete_many(session, claimed)
    finally:
        engine.dispose()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DELETE FROM daz_retry_limits")
    base = percentile(times["as-before"], 0.5)
    return [
        Figure(
            "limits",
            f"retryqueue-{mode}",
            {"rounds": rounds, "batch": batch_size},
            percentile(ms, 0.5),
            "ms p50",
            {
                "p50_ms": percentile(ms, 0.5),
                "p99_ms": percentile(ms, 0.99),
                "mean_ms": sum(ms) / len(ms),
                "p50_vs_as_before": percentile(ms, 0.5) / base,
            },
        )
        for mode, ms in times.items()
    ]
