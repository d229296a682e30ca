"""retryqueue's own scenarios: enqueue, drain, latency, scale, cleanup, memory.

Consumers always run the real :class:`~retryqueue.worker.Worker` with a no-op handler in
separate processes; history is on (the library always writes it).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from multiprocessing.queues import Queue
from typing import Any

import psutil  # type: ignore[import-untyped]
from sqlalchemy.engine import URL
from sqlalchemy.orm import sessionmaker

from benchmarks import seed
from benchmarks.harness import CONTEXT, Figure, Signals, percentile, stop_processes
from retryqueue.engine import create_engine
from retryqueue.queue import NewItem, RetryQueue
from retryqueue.results import ClaimedItem

SYSTEM = "retryqueue"


def _noop(job: Any) -> None:
    """The no-op handler."""


class TimedQueue(RetryQueue):
    """A RetryQueue that records (wall time, seconds) of every acquire that claimed items."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.acquire_times: list[tuple[float, float]] = []

    def acquire(self, *args: Any, **kwargs: Any) -> list[ClaimedItem]:
        """Time :meth:`RetryQueue.acquire`, committing included (the caller's commit is not)."""
        began = time.perf_counter()
        claimed = super().acquire(*args, **kwargs)
        if claimed:
            self.acquire_times.append((time.time(), time.perf_counter() - began))
        return claimed


def _make_worker(
    url: URL, batch_size: int, handler: Callable[[Any], None], queue: RetryQueue
) -> tuple[Any, Any]:
    from retryqueue.worker import Worker  # imported late: only consumers need it

    engine = create_engine(url, pool_size=4, max_overflow=4)
    sessions = sessionmaker(engine, expire_on_commit=False)
    worker = Worker(
        queue,
        sessions,
        {seed.EVENT_TYPE: handler},
        batch_size=batch_size,
        poll_interval=1.0,
        listen=True,
    )
    with engine.connect():
        pass  # connect before the clock starts
    return engine, worker


def _run_until_stopped(worker: Any, signals: Signals) -> None:
    def stop_later() -> None:
        signals.stop.wait()
        worker.stop()

    threading.Thread(target=stop_later, daemon=True).start()
    worker.run()


def consume(signals: Signals, url: URL, batch_size: int, results: Queue[Any] | None) -> None:
    """A worker process: drain with a no-op handler; optionally report acquire timings/RSS."""
    queue = TimedQueue()
    engine, worker = _make_worker(url, batch_size, _noop, queue)
    rss: list[tuple[float, int]] = []
    process = psutil.Process()

    def sample_rss() -> None:
        while not signals.stop.wait(0.5):
            rss.append((time.time(), process.memory_info().rss))

    try:
        signals.ready.set()
        signals.start.wait()
        if results is not None:
            threading.Thread(target=sample_rss, daemon=True).start()
        _run_until_stopped(worker, signals)
    finally:
        engine.dispose()
        if results is not None:
            results.put({"acquire": queue.acquire_times, "rss": rss})


def _latency_handler(results: Queue[Any]) -> Callable[[Any], None]:
    def handler(job: Any) -> None:
        results.put(time.time() - float(job.event_data["t"]))

    return handler


def consume_latency(signals: Signals, url: URL, batch_size: int, results: Queue[Any]) -> None:
    """A worker process whose handler reports enqueue-to-start latency for every item."""
    engine, worker = _make_worker(url, batch_size, _latency_handler(results), RetryQueue())
    try:
        signals.ready.set()
        signals.start.wait()
        _run_until_stopped(worker, signals)
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------
# Enqueue (in the benchmark process itself)


def enqueue_single(url: URL, count: int) -> Figure:
    """One item per transaction: the "an operation just failed" call."""
    engine = create_engine(url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    queue = RetryQueue()
    try:
        began = time.perf_counter()
        for number in range(count):
            with sessions.begin() as session:
                queue.enqueue(session, seed.EVENT_TYPE, {"i": number})
        elapsed = time.perf_counter() - began
    finally:
        engine.dispose()
    return Figure(
        "enqueue_single",
        SYSTEM,
        {"items": count},
        count / elapsed,
        "items/s",
        {"seconds": elapsed, "ms_per_item": 1000 * elapsed / count},
    )


def enqueue_bulk(url: URL, count: int, chunk: int = 1000) -> Figure:
    """``enqueue_many`` in transactions of ``chunk`` items."""
    engine = create_engine(url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    queue = RetryQueue()
    try:
        began = time.perf_counter()
        for first in range(0, count, chunk):
            items = [NewItem(seed.EVENT_TYPE, {"i": n}) for n in range(first, first + chunk)]
            with sessions.begin() as session:
                queue.enqueue_many(session, items)
        elapsed = time.perf_counter() - began
    finally:
        engine.dispose()
    return Figure(
        "enqueue_bulk",
        SYSTEM,
        {"items": count, "chunk": chunk},
        count / elapsed,
        "items/s",
        {"seconds": elapsed},
    )


def copy_baseline(url: URL, count: int, chunk: int = 1000) -> Figure:
    """A raw psycopg ``COPY`` of the rows enqueue_bulk writes (same chunks, one transaction
    each, the columns enqueue_many fills): what a hand-written bulk insert costs."""
    import json
    import uuid

    import psycopg

    from benchmarks.server import libpq_dsn

    columns = (
        "event_id, event_type, event_data, retry_count, max_retries, retry_delay_seconds, "
        "backoff_multiplier, priority, status, created_at, next_retry_at, expires_at"
    )
    with psycopg.connect(libpq_dsn(url)) as conn:
        began = time.perf_counter()
        for first in range(0, count, chunk):
            now = datetime.now(UTC)
            statement = f"COPY daz_retry_queue ({columns}) FROM STDIN"
            with conn.transaction(), conn.cursor() as cursor, cursor.copy(statement) as copy:
                for n in range(first, min(first + chunk, count)):
                    copy.write_row(
                        (
                            uuid.uuid4(),
                            seed.EVENT_TYPE,
                            json.dumps({"i": n}),
                            0,
                            3,
                            60,
                            2.0,
                            5,
                            "pending",
                            now,
                            now,
                            now + timedelta(days=7),
                        )
                    )
        elapsed = time.perf_counter() - began
    return Figure(
        "enqueue_bulk",
        "raw-copy",
        {"items": count, "chunk": chunk},
        count / elapsed,
        "items/s",
        {"seconds": elapsed},
    )


# ---------------------------------------------------------------------------------------
# Latency


def _start_latency_workers(
    url: URL, processes: int, results: Queue[Any]
) -> tuple[list[Any], Signals]:
    signals = Signals(CONTEXT.Event(), CONTEXT.Event(), CONTEXT.Event())
    children = []
    readies = []
    for _ in range(processes):
        ready = CONTEXT.Event()
        child = CONTEXT.Process(
            target=consume_latency,
            args=(Signals(ready, signals.start, signals.stop), url, 10, results),
        )
        child.start()
        children.append(child)
        readies.append(ready)
    for ready in readies:
        if not ready.wait(60):
            raise RuntimeError("latency worker failed to start")
    signals.start.set()
    return children, signals


def latency_idle(url: URL, samples: int) -> Figure:
    """Enqueue one item at a time on an idle queue; the worker wakes by NOTIFY."""
    engine = create_engine(url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    queue = RetryQueue()
    results: Queue[Any] = CONTEXT.Queue()
    children, signals = _start_latency_workers(url, 1, results)
    latencies = []
    try:
        time.sleep(1.5)  # let the worker go idle (it polls at most every poll_interval)
        for _ in range(samples):
            with sessions.begin() as session:
                queue.enqueue(session, seed.EVENT_TYPE, {"t": time.time()})
            latencies.append(results.get(timeout=10))
            time.sleep(random.uniform(0.05, 0.15))
    finally:
        signals.stop.set()
        stop_processes(children)
        engine.dispose()
    return _latency_figure("latency_idle", {"samples": samples, "workers": 1}, latencies)


def latency_loaded(url: URL, rate: float, seconds: float, processes: int = 2) -> Figure:
    """A producer enqueues single items at ``rate``/s while ``processes`` workers consume."""
    engine = create_engine(url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    queue = RetryQueue()
    results: Queue[Any] = CONTEXT.Queue()
    children, signals = _start_latency_workers(url, processes, results)
    latencies: list[float] = []
    sent = 0
    try:
        began = time.perf_counter()
        while (elapsed := time.perf_counter() - began) < seconds:
            due = int(elapsed * rate) + 1
            while sent < due:
                with sessions.begin() as session:
                    queue.enqueue(session, seed.EVENT_TYPE, {"t": time.time()})
                sent += 1
            time.sleep(max(0.0, (sent / rate) - (time.perf_counter() - began)))
        achieved = sent / (time.perf_counter() - began)
        deadline = time.monotonic() + 30
        while len(latencies) < sent and time.monotonic() < deadline:
            latencies.append(results.get(timeout=30))
    finally:
        signals.stop.set()
        stop_processes(children)
        engine.dispose()
    figure = _latency_figure(
        "latency_loaded",
        {"target_rate": rate, "seconds": seconds, "workers": processes},
        latencies,
    )
    figure.extra["achieved_rate"] = achieved
    return figure


def _latency_figure(name: str, params: dict[str, Any], latencies: list[float]) -> Figure:
    ms = [1000 * value for value in latencies]
    return Figure(
        name,
        SYSTEM,
        params,
        percentile(ms, 0.5),
        "ms p50",
        {"p50_ms": percentile(ms, 0.5), "p99_ms": percentile(ms, 0.99), "max_ms": max(ms)},
    )


# ---------------------------------------------------------------------------------------
# Scale: acquire latency by table size


def acquire_latency(url: URL, rounds: int, batch_size: int = 10) -> dict[str, float]:
    """Time ``rounds`` acquire calls (each batch then completed and committed)."""
    engine = create_engine(url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    queue = RetryQueue()
    times = []
    try:
        for _ in range(rounds):
            with sessions.begin() as session:
                began = time.perf_counter()
                claimed = queue.acquire(session, "bench-scale", batch_size)
                times.append(1000 * (time.perf_counter() - began))
                queue.complete_many(session, claimed)
    finally:
        engine.dispose()
    return {
        "p50_ms": percentile(times, 0.5),
        "p99_ms": percentile(times, 0.99),
        "mean_ms": sum(times) / len(times),
    }


def stamp(moment: float) -> str:
    """A wall-clock time for the JSON output."""
    return datetime.fromtimestamp(moment).isoformat(timespec="milliseconds")
