"""``python -m benchmarks [--quick] [--database-url URL] [--out FILE] [--only a,b]``.

Groups: enqueue, drain (retryqueue), asyncio (the asyncio worker's drain), ceiling, pgqueuer,
procrastinate, latency, scale, cleanup, memory,
mariadb (retryqueue on MariaDB/MySQL at $RETRYQUEUE_BENCH_MYSQL_URL),
scaling (1-16 worker processes, database figures; also through PgBouncer if installed),
partitions (cleanup by DELETE vs partition drop, claim latency on a bloated vs partitioned table),
otel (the drain without OpenTelemetry, with the extra imported but idle, on a no-op SDK),
dashboard (server time of each dashboard page with 1M items + 1M history rows; quick 100k).
limits (acquire latency with rate limits bypassed, idle, on an unrelated key, on the claimed key).
Without a URL (or $RETRYQUEUE_BENCH_POSTGRES_URL) the run starts its own embedded
PostgreSQL and stops it at the end. A group that fails is reported as skipped.

The groups that are compared with each other (enqueue, drain, asyncio, ceiling, pgqueuer)
run ``--rounds`` times (full: 3, quick: 1), interleaved: each round runs all of them once.
Each of their figures is the median round (the details keep every round's figure), so a
burst of load on this shared machine moves one round of every system, not one system.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import subprocess
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import (
    async_drain,
    dashboard,
    extra,
    limits_cost,
    mariadb,
    otel_cost,
    peers,
    report,
    scaling,
    scenarios,
    seed,
    sql_ceiling,
)
from benchmarks import partitions as partition_bench
from benchmarks.harness import Figure, run_consumers
from benchmarks.server import BenchServer, bench_server, describe, libpq_dsn

REPEATED = ("enqueue", "drain", "asyncio", "ceiling", "pgqueuer")  # rounds, interleaved
GROUPS = (
    "enqueue",
    "drain",
    "asyncio",
    "ceiling",
    "pgqueuer",
    "procrastinate",
    "latency",
    "scale",
    "cleanup",
    "memory",
    "mariadb",
    "scaling",
    "partitions",
    "otel",
    "dashboard",
    "limits",
)
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Plan:
    """Sizes of one run."""

    mode: str
    drain_items: int
    procrastinate_items: int
    rq_drains: tuple[tuple[int, int], ...]  # (worker processes, batch size)
    ceiling_drains: tuple[tuple[int, int], ...]
    pgqueuer_drains: tuple[tuple[str, int, int], ...]  # (driver, processes, batch)
    enqueue_single: int
    enqueue_bulk: int
    latency_samples: int
    load_rate: float
    load_seconds: float
    big: bool  # the 1M-row scenarios and the 200k memory run
    rounds: int  # of the REPEATED groups, interleaved

    @classmethod
    def quick(cls) -> Plan:
        """Under a minute: small sizes, no 1M-row scenarios."""
        return cls(
            mode="quick",
            drain_items=3_000,
            procrastinate_items=500,
            rq_drains=((1, 10), (4, 10)),
            ceiling_drains=((1, 10), (4, 10)),
            pgqueuer_drains=(("asyncpg", 1, 10), ("psycopg", 1, 10)),
            enqueue_single=300,
            enqueue_bulk=5_000,
            latency_samples=15,
            load_rate=200,
            load_seconds=2,
            big=False,
            rounds=1,
        )

    @classmethod
    def full(cls) -> Plan:
        """Every scenario at the issue's sizes."""
        return cls(
            mode="full",
            drain_items=20_000,
            procrastinate_items=2_000,
            rq_drains=((1, 10), (4, 10), (1, 100)),
            ceiling_drains=((1, 10), (4, 10), (1, 100)),
            pgqueuer_drains=(("asyncpg", 1, 10), ("asyncpg", 4, 10), ("psycopg", 1, 10)),
            enqueue_single=3_000,
            enqueue_bulk=100_000,
            latency_samples=100,
            load_rate=400,
            load_seconds=10,
            big=True,
            rounds=3,
        )


def _drain_figure(
    system: str, workers: int, batch: int, items: int, measured: tuple[float, int, Any]
) -> Figure:
    seconds, counted, _ = measured
    return Figure(
        "drain",
        system,
        {"workers": workers, "batch": batch, "items": items},
        counted / seconds,
        "items/s",
        {"seconds": seconds, "counted": counted},
    )


class Run:
    """One benchmark run on one server."""

    def __init__(self, server: BenchServer, plan: Plan) -> None:
        self.server = server
        self.plan = plan
        self.figures: list[Figure] = []
        self.rq_url = server.create_database("bench_rq")
        self.rq_dsn = seed.prepared_database(self.rq_url)

    def record(self, figure: Figure) -> None:
        """Keep a figure and print it."""
        self.figures.append(figure)
        if figure.skipped:
            print(f"  {figure.scenario:16} {figure.system:18} skipped: {figure.skipped}")
        else:
            print(
                f"  {figure.scenario:16} {figure.system:18} {report._params(figure.params):40} "
                f"{report._number(figure.value, figure.unit)}",
                flush=True,
            )

    def guarded(
        self, group: str, system: str, body: Callable[[], None], label: str | None = None
    ) -> None:
        """Run a group; on any error record it as skipped with the reason."""
        print(f"[{label or group}]", flush=True)
        try:
            body()
        except Exception as exc:
            traceback.print_exc()
            self.record(Figure(group, system, {}, None, "", skipped=f"{type(exc).__name__}: {exc}"))

    # -- groups ------------------------------------------------------------------------

    def enqueue(self) -> None:
        seed.reset(self.rq_dsn)
        self.record(scenarios.enqueue_single(self.rq_url, self.plan.enqueue_single))
        seed.reset(self.rq_dsn)
        self.record(scenarios.enqueue_bulk(self.rq_url, self.plan.enqueue_bulk))
        seed.reset(self.rq_dsn)
        self.record(scenarios.copy_baseline(self.rq_url, self.plan.enqueue_bulk))

    def _seeded_drain(self, target: Callable[..., None], args: tuple[Any, ...], workers: int):  # type: ignore[no-untyped-def]
        items = self.plan.drain_items
        seed.reset(self.rq_dsn)
        seed.seed(self.rq_dsn, items)
        return run_consumers(
            target,
            args,
            processes=workers,
            dsn=self.rq_dsn,
            count_query=seed.terminal_count_query(),
            expected=items,
            timeout=300,
        )

    def drain(self) -> None:
        for workers, batch in self.plan.rq_drains:
            measured = self._seeded_drain(scenarios.consume, (self.rq_url, batch, None), workers)
            self.record(
                _drain_figure("retryqueue", workers, batch, self.plan.drain_items, measured)
            )

    def asyncio(self) -> None:
        for driver in async_drain.DRIVERS:
            for workers, batch in self.plan.rq_drains:
                args = (self.rq_url, driver, batch)
                measured = self._seeded_drain(async_drain.consume, args, workers)
                system = f"retryqueue-async-{driver}"
                self.record(_drain_figure(system, workers, batch, self.plan.drain_items, measured))

    def otel(self) -> None:
        for mode in otel_cost.MODES:
            measured = self._seeded_drain(otel_cost.consume, (self.rq_url, 10, mode), 1)
            system = f"retryqueue-{mode}"
            self.record(_drain_figure(system, 1, 10, self.plan.drain_items, measured))
        self.record(otel_cost.attempt_cpu_cost())

    def limits(self) -> None:
        rounds = 1_000 if self.plan.big else 200
        for figure in limits_cost.claim_cost(self.rq_url, self.rq_dsn, rounds):
            self.record(figure)

    def ceiling(self) -> None:
        for workers, batch in self.plan.ceiling_drains:
            measured = self._seeded_drain(sql_ceiling.consume, (self.rq_dsn, batch), workers)
            self.record(
                _drain_figure("sql-ceiling", workers, batch, self.plan.drain_items, measured)
            )

    def pgqueuer(self) -> None:
        for driver, workers, batch in self.plan.pgqueuer_drains:
            system = f"pgqueuer-{driver}"
            try:
                url = self.server.create_database("bench_pgq")
                dsn = libpq_dsn(url)
                peers.pgqueuer_seed(dsn, self.plan.drain_items)
                measured = run_consumers(
                    peers.pgqueuer_consume,
                    (dsn, driver, batch),
                    processes=workers,
                    dsn=dsn,
                    count_query=peers.PGQUEUER_COUNT,
                    expected=self.plan.drain_items,
                    timeout=300,
                )
                self.server.drop_database(url)
                self.record(_drain_figure(system, workers, batch, self.plan.drain_items, measured))
            except Exception as exc:
                traceback.print_exc()
                self.record(
                    Figure(
                        "drain",
                        system,
                        {"workers": workers, "batch": batch},
                        None,
                        "items/s",
                        skipped=f"{type(exc).__name__}: {exc}",
                    )
                )

    def procrastinate(self) -> None:
        items = self.plan.procrastinate_items
        url = self.server.create_database("bench_proc")
        dsn = libpq_dsn(url)
        peers.procrastinate_seed(dsn, items)
        measured = run_consumers(
            peers.procrastinate_consume,
            (dsn, 10),
            processes=1,
            dsn=dsn,
            count_query=peers.PROCRASTINATE_COUNT,
            expected=items,
            timeout=300,
        )
        self.server.drop_database(url)
        figure = _drain_figure("procrastinate", 1, 10, items, measured)
        figure.extra["note"] = (
            "batch = worker concurrency 10 (procrastinate fetches one job at a time)"
        )
        self.record(figure)

    def latency(self) -> None:
        seed.reset(self.rq_dsn)
        self.record(scenarios.latency_idle(self.rq_url, self.plan.latency_samples))
        seed.reset(self.rq_dsn)
        self.record(
            scenarios.latency_loaded(self.rq_url, self.plan.load_rate, self.plan.load_seconds)
        )

    def scale(self) -> None:
        for figure in extra.scale(self.rq_url, self.rq_dsn, big=self.plan.big):
            self.record(figure)

    def cleanup(self) -> None:
        if not self.plan.big:
            self.record(Figure("cleanup", "retryqueue", {}, None, "", skipped="full run only"))
            return
        self.record(extra.cleanup_under_load(self.rq_url, self.rq_dsn))

    def mariadb(self) -> None:
        server = mariadb.server_url()
        if server is None:
            reason = f"set {mariadb.URL_ENV} to a MariaDB/MySQL server URL"
            self.record(Figure("drain", mariadb.SYSTEM, {}, None, "", skipped=reason))
            return
        for figure in mariadb.figures(
            server,
            enqueue_single=self.plan.enqueue_single,
            enqueue_bulk=self.plan.enqueue_bulk,
            drain_items=self.plan.drain_items,
            drains=self.plan.rq_drains[:2],
        ):
            self.record(figure)

    def scaling(self) -> None:
        counts, items = scaling.SIZES[self.plan.mode]
        for figure in scaling.scaling(self.rq_url, self.server.admin_url, counts, items):
            self.record(figure)

    def partitions(self) -> None:
        rows = 1_000_000 if self.plan.big else 100_000
        for figure in partition_bench.figures(self.server, rows):
            self.record(figure)

    def dashboard(self) -> None:
        items = 1_000_000 if self.plan.big else 100_000
        for figure in dashboard.figures(self.server, items):
            self.record(figure)

    def memory(self) -> None:
        if not self.plan.big:
            self.record(Figure("memory", "retryqueue", {}, None, "", skipped="full run only"))
            return
        self.record(extra.memory(self.rq_url, self.rq_dsn, 200_000))


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        return f"{out}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # The default SIGTERM action skips `finally`: the embedded server would be orphaned.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the chosen groups, write the JSON, doc and chart."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--database-url", help="PostgreSQL server to use (default: embedded)")
    parser.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/)")
    parser.add_argument("--only", help=f"comma-separated groups among {','.join(GROUPS)}")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--chart", type=Path, default=ROOT / "docs" / "benchmarks.png")
    parser.add_argument("--no-doc", action="store_true", help="do not touch docs/")
    parser.add_argument(
        "--rounds", type=int, help=f"rounds of {', '.join(REPEATED)} (full 3, quick 1)"
    )
    args = parser.parse_args(argv)

    chosen = GROUPS if not args.only else tuple(g.strip() for g in args.only.split(","))
    unknown = set(chosen) - set(GROUPS)
    if unknown:
        parser.error(f"unknown groups: {', '.join(sorted(unknown))}")
    plan = Plan.quick() if args.quick else Plan.full()
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        plan = dataclasses.replace(plan, rounds=args.rounds)
    started = datetime.now(UTC)
    out = args.out or ROOT / "benchmarks" / "results" / (
        f"{plan.mode}-{started:%Y%m%dT%H%M%S}.json"
    )
    began = time.perf_counter()
    with bench_server(args.database_url) as server:
        meta: dict[str, Any] = {
            "mode": plan.mode,
            "started": started.isoformat(timespec="seconds"),
            "git_commit": _git_commit(),
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
            "postgres": describe(server),
            "groups": list(chosen),
            "rounds": plan.rounds,
        }
        print(f"PostgreSQL: {meta['postgres']['version']} ({server.origin})", flush=True)
        run = Run(server, plan)
        for number in range(plan.rounds):
            for group in REPEATED:
                if group in chosen:
                    label = group if plan.rounds == 1 else f"{group}, round {number + 1}"
                    run.guarded(group, group, getattr(run, group), label)
        run.figures = report.median_rounds(run.figures)
        for group in GROUPS:
            if group in chosen and group not in REPEATED:
                run.guarded(group, group, getattr(run, group))
    meta["seconds"] = time.perf_counter() - began
    report.write_json(out, meta, run.figures)
    print(f"JSON: {out}")
    table = report.markdown(meta, run.figures)
    print(table)
    if not args.no_doc:
        report.update_doc(args.doc, table)
        report.chart(args.chart, meta, run.figures)
        print(f"updated {args.doc} and {args.chart}")
    print(f"total {meta['seconds']:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
