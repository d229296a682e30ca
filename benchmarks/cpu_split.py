"""``python -m benchmarks.cpu_split [--database-url URL] [--items N] [--rounds R]``: where
the CPU of a one-process drain goes, database side and consumer side, for retryqueue's
thread worker, its asyncio worker (asyncpg), the hand-written SQL loop and pgqueuer
(asyncpg, as its own benchmark runs it: 5 dequeuers on uvloop), batch 10.

Each drain runs the benchmark's own seeding and consumer process. Around the drain (the
seeding excluded) it reads the CPU time of every PostgreSQL process on this machine, the
postmaster's reaped backends included, and the CPU time of the finished consumer process
(``RUSAGE_CHILDREN``, its start-up included). So the server must run on this machine: the
embedded one, or a local one. Prints items/s and CPU per item. Never run as a test.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from typing import Any

import psutil  # type: ignore[import-untyped]
import psycopg

from benchmarks import async_drain, peers, scenarios, seed, sql_ceiling
from benchmarks.harness import run_consumers
from benchmarks.server import bench_server, libpq_dsn


def server_cpu() -> float:
    """Seconds of CPU used so far by PostgreSQL's processes (reaped backends included)."""
    total = 0.0
    for process in psutil.process_iter(["name", "cpu_times", "ppid"]):
        name, times = process.info["name"] or "", process.info["cpu_times"]
        if "postgres" not in name or times is None:
            continue
        total += times.user + times.system
        with_parent = psutil.Process(process.info["ppid"]) if process.info["ppid"] > 1 else None
        if with_parent is None or "postgres" not in (with_parent.name() or ""):
            total += times.children_user + times.children_system  # the postmaster's
    return total


def consumers_cpu() -> float:
    """Seconds of CPU used by this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(name: str, items: int, prepare: Callable[[], None], drain: Callable[[], Any]) -> None:
    """Prepare (not measured), drain, print the figures."""
    prepare()
    server, consumer = server_cpu(), consumers_cpu()
    seconds, _, _ = drain()
    time.sleep(0.5)  # let the postmaster reap the backends that just left
    server, consumer = server_cpu() - server, consumers_cpu() - consumer
    print(
        f"{name:18} {items / seconds:7.0f} items/s  PostgreSQL {server * 1e6 / items:5.0f} µs/item"
        f"  consumer {consumer * 1e6 / items:5.0f} µs/item",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    items: int = args.items
    with bench_server(args.database_url) as server:
        rq_url = server.create_database("bench_cpu_rq")
        rq_dsn = seed.prepared_database(rq_url)
        pgq_url = server.create_database("bench_cpu_pgq")
        pgq_dsn = libpq_dsn(pgq_url)

        def seed_queue() -> None:
            seed.reset(rq_dsn)
            seed.seed(rq_dsn, items)

        def seed_pgqueuer() -> None:
            with psycopg.connect(pgq_dsn, autocommit=True) as conn:
                conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
            peers.pgqueuer_seed(pgq_dsn, items)

        def drain(target: Callable[..., None], argv: tuple[Any, ...], dsn: str, count: str) -> Any:
            return run_consumers(
                target, argv, processes=1, dsn=dsn, count_query=count, expected=items, timeout=300
            )

        terminal = seed.terminal_count_query()
        for _ in range(args.rounds):
            measure(
                "retryqueue",
                items,
                seed_queue,
                lambda: drain(scenarios.consume, (rq_url, 10, None), rq_dsn, terminal),
            )
            measure(
                "retryqueue-async",
                items,
                seed_queue,
                lambda: drain(async_drain.consume, (rq_url, "asyncpg", 10), rq_dsn, terminal),
            )
            measure(
                "sql-loop",
                items,
                seed_queue,
                lambda: drain(sql_ceiling.consume, (rq_dsn, 10), rq_dsn, terminal),
            )
            measure(
                "pgqueuer-asyncpg",
                items,
                seed_pgqueuer,
                lambda: drain(
                    peers.pgqueuer_consume,
                    (pgq_dsn, "asyncpg", 10),
                    pgq_dsn,
                    peers.PGQUEUER_COUNT,
                ),
            )
        server.drop_database(rq_url)
        server.drop_database(pgq_url)


if __name__ == "__main__":
    main()
