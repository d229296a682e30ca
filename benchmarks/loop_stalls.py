"""``python -m benchmarks.loop_stalls [--database-url URL] [--items N] [--rounds R]``: where
the asyncio worker's one thread waits while the database sits on the same machine.

Drains ``items`` no-op items at batch 10 with one consumer process, the thread worker and
the asyncio worker (asyncpg) taking turns, and prints for each: items/s, the share of the
machine's CPU left idle during the drain (``/proc/stat``), and the consumer's involuntary
context switches per batch. In the asyncio worker's process it also times every socket write
of the event loop (asyncio's ``_SelectorSocketTransport.write``, wrapped for the run): its
wall time against the thread's CPU time, how many took over 50 µs, and the share of the
drain those writes held the loop. A write wakes the PostgreSQL backend that reads it; when
no core is idle the scheduler may run that backend on the writer's core and the writer waits
off-CPU inside ``send()``. The thread worker's driver threads wait the same way, but psycopg
releases the GIL there, so its other driver keeps going; the event loop has no other thread.

Linux only (``/proc/stat``). Never run as a test.
"""

from __future__ import annotations

import argparse
import asyncio.selector_events
import resource
import threading
import time
from multiprocessing.queues import Queue
from typing import Any

from sqlalchemy.engine import URL

from benchmarks import async_drain, scenarios, seed
from benchmarks.harness import CONTEXT, Signals, run_consumers
from benchmarks.server import bench_server

SLOW_WRITE = 50e-6  # seconds of wall time beyond which a write counts as a stall


class WriteTimer:
    """Times every write of asyncio's socket transports in this process (wall and CPU)."""

    def __init__(self) -> None:
        self.count = 0
        self.wall = 0.0
        self.cpu = 0.0
        self.slow = 0

    def install(self) -> None:
        """Wrap the transport's write for the rest of this process."""
        transport = asyncio.selector_events._SelectorSocketTransport
        original = transport.write

        def write(instance: Any, data: Any) -> None:
            wall, cpu = time.perf_counter(), time.thread_time()
            original(instance, data)
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            self.count += 1
            self.wall += wall
            self.cpu += cpu
            self.slow += wall > SLOW_WRITE

        transport.write = write  # type: ignore[method-assign]

    def summary(self) -> dict[str, float]:
        """Counts and totals (seconds) of the writes timed so far."""
        return {"writes": self.count, "wall": self.wall, "cpu": self.cpu, "slow": self.slow}


class Counters:
    """The machine's CPU ticks and this process's involuntary switches, from the moment the
    drain starts (a thread waits for the start signal; start-up is not counted)."""

    def __init__(self, signals: Signals, timer: WriteTimer | None = None) -> None:
        self.timer = timer
        self.began: tuple[tuple[int, int], int, dict[str, float]] | None = None
        threading.Thread(target=self._begin, args=(signals,), daemon=True).start()

    def _now(self) -> tuple[tuple[int, int], int, dict[str, float]]:
        switches = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
        return _cpu_ticks(), switches, self.timer.summary() if self.timer else {}

    def _begin(self, signals: Signals) -> None:
        signals.start.wait()
        self.began = self._now()

    def since_start(self) -> dict[str, float]:
        """The differences since the start (all zero if it never came)."""
        now = self._now()
        (total, idle), switches, writes = now
        (total0, idle0), switches0, writes0 = self.began or now
        figures = {key: value - writes0[key] for key, value in writes.items()}
        figures.update(ticks=total - total0, idle=idle - idle0, switches=switches - switches0)
        return figures


def consume_thread(signals: Signals, url: URL, batch: int, results: Queue[Any]) -> None:
    """The thread worker's drain (the benchmark's own consumer), with its context switches."""
    counters = Counters(signals)
    scenarios.consume(signals, url, batch, None)
    results.put(counters.since_start())


def consume_async(signals: Signals, url: URL, batch: int, results: Queue[Any]) -> None:
    """The asyncio worker's drain (the benchmark's own consumer), its writes timed."""
    timer = WriteTimer()
    timer.install()
    counters = Counters(signals, timer)
    async_drain.consume(signals, url, "asyncpg", batch)
    results.put(counters.since_start())


def _cpu_ticks() -> tuple[int, int]:
    """(all, idle + iowait) jiffies of the machine so far."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]


def measure(name: str, target: Any, url: URL, dsn: str, items: int, batch: int) -> None:
    """Seed, drain with one consumer process, print the figures."""
    seed.reset(dsn)
    seed.seed(dsn, items)
    results: Queue[Any] = CONTEXT.Queue()
    seconds, counted, reported = run_consumers(
        target,
        (url, batch, results),
        processes=1,
        dsn=dsn,
        count_query=seed.terminal_count_query(),
        expected=items,
        timeout=300,
        results=results,
    )
    figures = reported[0] if reported else {}
    idle = figures.get("idle", 0) / max(figures.get("ticks", 0), 1)
    line = (
        f"{name:18} {counted / seconds:7.0f} items/s  machine idle {idle:4.0%}"
        f"  involuntary switches {figures.get('switches', 0) * batch / items:4.2f}/batch"
    )
    if writes := figures.get("writes"):
        wall = figures["wall"] / writes * 1e6
        line += (
            f"  writes {writes / items * batch:4.2f}/batch: wall {wall:4.0f} µs"
            f" CPU {figures['cpu'] / writes * 1e6:3.0f} µs, {figures['slow'] / writes:4.0%} over"
            f" {SLOW_WRITE * 1e6:.0f} µs, {figures['wall'] / seconds:4.0%} of the drain"
        )
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with bench_server(args.database_url) as server:
        url = server.create_database("bench_stalls")
        dsn = seed.prepared_database(url)
        for _ in range(args.rounds):
            measure("retryqueue", consume_thread, url, dsn, args.items, args.batch)
            measure("retryqueue-async", consume_async, url, dsn, args.items, args.batch)
        server.drop_database(url)


if __name__ == "__main__":
    main()
