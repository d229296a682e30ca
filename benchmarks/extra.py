"""The scale scenarios: acquire latency by table size, cleanup under load, worker memory."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.orm import sessionmaker

from benchmarks import scenarios, seed
from benchmarks.harness import CONTEXT, Figure, Signals, percentile, run_consumers, stop_processes
from retryqueue.engine import create_engine
from retryqueue.queue import RetryQueue

SYSTEM = "retryqueue"
ROUNDS = 200
CLEANUP_LIMIT = 90.0  # seconds of cleanup measured at most


def scale(url: URL, dsn: str, *, big: bool) -> list[Figure]:
    """Acquire latency with 10k pending; with 1M pending plus 1M finished (full run)."""
    figures = []
    sizes = [(10_000, 0)] + ([(1_000_000, 1_000_000)] if big else [])
    for pending, finished in sizes:
        seed.reset(dsn)
        if finished:
            seed.seed(dsn, finished, status="completed", age_days=1)
        seed.seed(dsn, pending)
        stats = scenarios.acquire_latency(url, ROUNDS)
        figures.append(
            Figure(
                "acquire_latency",
                SYSTEM,
                {"pending": pending, "finished": finished, "batch": 10, "rounds": ROUNDS},
                stats["p50_ms"],
                "ms p50",
                stats,
            )
        )
    if len(figures) == 2 and figures[0].value:
        figures[1].extra["ratio_to_10k"] = (figures[1].value or 0) / figures[0].value
    return figures


def cleanup_under_load(url: URL, dsn: str, finished: int = 1_000_000) -> Figure:
    """Delete ``finished`` old rows in committed batches while a worker drains."""
    seed.reset(dsn)
    seed.seed(dsn, finished, status="completed", age_days=30)
    seed.seed(dsn, 300_000)
    results: Any = CONTEXT.Queue()
    signals = Signals(CONTEXT.Event(), CONTEXT.Event(), CONTEXT.Event())
    child = CONTEXT.Process(target=scenarios.consume, args=(signals, url, 10, results))
    engine = create_engine(url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    try:
        child.start()
        if not signals.ready.wait(60):
            raise RuntimeError("worker failed to start")
        signals.start.set()
        time.sleep(3)  # the baseline: acquire latency without cleanup
        cleanup_began = time.time()
        deleted = 0
        with sessions() as session:
            for part in RetryQueue().iter_cleanup(session, retention_days=7):
                session.commit()
                deleted += part.deleted_count
                if time.time() - cleanup_began > CLEANUP_LIMIT:
                    break  # rows/s is the figure; the rest would only take longer
        cleanup_ended = time.time()
        time.sleep(2)
        signals.stop.set()
        message = results.get(timeout=60)
    finally:
        signals.stop.set()
        stop_processes([child])
        engine.dispose()
    before = [ms * 1000 for at, ms in message["acquire"] if at < cleanup_began]
    during = [ms * 1000 for at, ms in message["acquire"] if cleanup_began <= at <= cleanup_ended]
    seconds = cleanup_ended - cleanup_began
    extra: dict[str, Any] = {"deleted": deleted, "cleanup_seconds": seconds}
    for label, values in (("before", before), ("during", during)):
        if values:
            extra[f"acquire_p50_ms_{label}"] = percentile(values, 0.5)
            extra[f"acquire_p99_ms_{label}"] = percentile(values, 0.99)
    return Figure(
        "cleanup",
        SYSTEM,
        {"finished_rows": finished, "workers": 1},
        deleted / seconds if seconds else None,
        "rows/s deleted",
        extra,
    )


def memory(url: URL, dsn: str, items: int) -> Figure:
    """A worker's RSS while it drains ``items`` items."""
    seed.reset(dsn)
    seed.seed(dsn, items)
    results: Any = CONTEXT.Queue()
    seconds, counted, messages = run_consumers(
        scenarios.consume,
        (url, 10, results),
        processes=1,
        dsn=dsn,
        count_query=seed.terminal_count_query(),
        expected=items,
        timeout=1200,
        results=results,
    )
    rss = [value / 2**20 for _, value in messages[0]["rss"]] if messages else []
    if not rss:
        raise RuntimeError("no RSS samples")
    first = rss[min(4, len(rss) - 1)]  # after ~2 s of warm-up
    return Figure(
        "memory",
        SYSTEM,
        {"items": items, "workers": 1, "batch": 10},
        rss[-1] - first,
        "MiB growth",
        {
            "rss_start_mib": first,
            "rss_end_mib": rss[-1],
            "rss_max_mib": max(rss),
            "samples": len(rss),
            "drain_items_per_s": counted / seconds,
        },
    )
