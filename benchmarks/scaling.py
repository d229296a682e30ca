"""The scaling group: 1, 2, 4, 8, 16 worker processes drain one backlog; where does it saturate?

Each step seeds the same backlog and times W processes of the real ``Worker`` (no-op
handler, batch 10) with the harness's protocol. Beside items/s it reports what the
database did, so the saturation point shows: transactions per item (``xact_commit`` of
``pg_stat_database`` over the whole step) and per second, backends busy in a transaction
and backends waiting (on locks, LWLocks, I/O) on average, and the CPU used by PostgreSQL's
processes, by the worker processes and by the whole host (psutil; PostgreSQL's share only
when its processes run on this host).

With PgBouncer installed (``tests/support/pgbouncer.py`` starts one in transaction pooling
mode, ``default_pool_size`` 4), the largest worker counts run once more through it,
polling instead of LISTEN.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil  # type: ignore[import-untyped]
import psycopg
from sqlalchemy.engine import URL
from sqlalchemy.orm import sessionmaker

from benchmarks import seed
from benchmarks.harness import Figure, Signals, run_consumers
from benchmarks.server import libpq_dsn
from retryqueue.engine import create_engine
from retryqueue.queue import RetryQueue

SYSTEM = "retryqueue"
BATCH = 10
SAMPLE_EVERY = 0.1  # seconds
BOUNCER_POOL = 4
STATS_FLUSH = 1.2  # backends publish their counters at most once a second

_SAMPLE = """
SELECT (SELECT count(*) FROM daz_retry_queue
         WHERE status IN ('completed', 'failed', 'dead_letter')),
       count(*) FILTER (WHERE state IN ('active', 'idle in transaction')),
       count(*) FILTER (WHERE wait_event_type IN ('Lock', 'LWLock', 'IO')),
       count(*)
  FROM pg_stat_activity
 WHERE datname = current_database() AND pid <> pg_backend_pid()
   AND backend_type = 'client backend'
"""


def _noop(job: Any) -> None:
    """The no-op handler."""


def consume(signals: Signals, url: URL, batch_size: int, pgbouncer: bool) -> None:
    """A worker process (LISTEN unless behind PgBouncer): drain until told to stop."""
    from retryqueue.worker import Worker  # imported late: only consumers need it

    engine = create_engine(url, pgbouncer=pgbouncer, pool_size=4, max_overflow=4)
    worker = Worker(
        RetryQueue(),
        sessionmaker(engine, expire_on_commit=False),
        {seed.EVENT_TYPE: _noop},
        batch_size=batch_size,
        poll_interval=1.0,
    )
    try:
        with engine.connect():
            pass  # connect before the clock starts
        signals.ready.set()
        signals.start.wait()

        def stop_when_told() -> None:
            signals.stop.wait()
            worker.stop()

        threading.Thread(target=stop_when_told, daemon=True).start()
        worker.run()
    finally:
        engine.dispose()


@dataclass
class Sample:
    """One look at the database and the host."""

    at: float
    terminal: int
    busy: int
    waiting: int
    connections: int
    postgres_cpu: dict[int, float]
    worker_cpu: dict[int, float]
    host_busy: float
    host_total: float


@dataclass
class Sampler:
    """Samples the database and the CPUs in a thread while a step runs."""

    dsn: str
    samples: list[Sample] = field(default_factory=list)

    @contextlib.contextmanager
    def running(self) -> Iterator[Sampler]:
        """Sample every SAMPLE_EVERY seconds during the block."""
        done = threading.Event()
        with psycopg.connect(self.dsn, autocommit=True) as connection:
            postmaster = _postmaster(connection)

            def loop() -> None:
                while not done.wait(SAMPLE_EVERY):
                    self.samples.append(_sample(connection, postmaster))

            thread = threading.Thread(target=loop, daemon=True)
            thread.start()
            try:
                yield self
            finally:
                done.set()
                thread.join(10)

    def window(self, items: int) -> dict[str, Any]:
        """Averages and CPU shares between the last idle sample and the first finished one."""
        started = [s for s in self.samples if s.terminal == 0]
        ended = [s for s in self.samples if s.terminal >= items]
        if not started or not ended or ended[0].at <= started[-1].at:
            return {}
        first, last = started[-1], ended[0]
        inside = [s for s in self.samples if first.at <= s.at <= last.at]
        seconds = last.at - first.at
        busy = last.host_busy - first.host_busy
        total = last.host_total - first.host_total
        return {
            "busy_backends_avg": round(sum(s.busy for s in inside) / len(inside), 1),
            "waiting_backends_avg": round(sum(s.waiting for s in inside) / len(inside), 1),
            "connections_max": max(s.connections for s in inside),
            "postgres_cpu_pct": _cpu_percent(inside, "postgres_cpu", seconds),
            "workers_cpu_pct": _cpu_percent(inside, "worker_cpu", seconds),
            "host_cpu_busy_pct": round(100 * busy / total, 0) if total else None,
        }


def _postmaster(connection: psycopg.Connection[Any]) -> psutil.Process | None:
    """PostgreSQL's main process, when it runs on this host and psutil may see it."""
    row = connection.execute("SELECT pg_backend_pid()").fetchone()
    try:
        return psutil.Process(int(row[0])).parent() if row else None
    except (psutil.Error, OSError):
        return None


def _cpu_by_pid(processes: list[psutil.Process]) -> dict[int, float]:
    seconds = {}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
    return seconds


def _sample(connection: psycopg.Connection[Any], postmaster: psutil.Process | None) -> Sample:
    row = connection.execute(_SAMPLE).fetchone()
    assert row is not None
    try:
        backends = postmaster.children() if postmaster is not None else []
    except psutil.Error:
        backends = []
    workers = [p for p in psutil.Process().children(recursive=True) if p not in backends]
    cpu = psutil.cpu_times()
    return Sample(
        time.perf_counter(),
        int(row[0]),
        int(row[1]),
        int(row[2]),
        int(row[3]),
        _cpu_by_pid(backends),
        _cpu_by_pid(workers),
        sum(cpu) - cpu.idle - getattr(cpu, "iowait", 0.0),
        sum(cpu),
    )


def _cpu_percent(inside: list[Sample], which: str, seconds: float) -> float | None:
    """CPU used across the samples, as a percentage of one core (200 = two cores busy).

    Processes that exit before the last sample (backends of stopping workers) count up
    to the last sample that saw them.
    """
    start: dict[int, float] = getattr(inside[0], which)
    latest: dict[int, float] = {}
    for sample in inside:
        latest.update(getattr(sample, which))
    if not latest or seconds <= 0:
        return None
    used = sum(value - start.get(pid, 0.0) for pid, value in latest.items())
    return round(100 * used / seconds, 0)


def _commits(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as connection:
        row = connection.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        return int(row[0]) if row else 0


def _step(
    url: URL, dsn: str, workers: int, items: int, *, through: URL | None = None
) -> tuple[float, dict[str, Any]]:
    """Drain ``items`` with ``workers`` processes; items/s and the database's figures."""
    seed.reset(dsn)
    seed.seed(dsn, items)
    time.sleep(STATS_FLUSH)
    commits_before = _commits(dsn)
    sampler = Sampler(dsn)
    with sampler.running():
        seconds, counted, _ = run_consumers(
            consume,
            (through or url, BATCH, through is not None),
            processes=workers,
            dsn=dsn,
            count_query=seed.terminal_count_query(),
            expected=items,
            timeout=900,
        )
    time.sleep(STATS_FLUSH)
    rate = counted / seconds
    per_item = (_commits(dsn) - commits_before) / counted
    details = {
        "seconds": round(seconds, 2),
        "xact_per_item": round(per_item, 2),
        "xact_per_s": round(rate * per_item, 0),
        **sampler.window(items),
    }
    return rate, details


@contextlib.contextmanager
def _pgbouncer(server_url: URL) -> Iterator[Any]:
    """A PgBouncer of our own in front of the benchmark server, or None if not installed."""
    from tests.support.pgbouncer import find_pgbouncer, start_pgbouncer

    binary = find_pgbouncer()
    if binary is None:
        yield None
        return
    bouncer = start_pgbouncer(binary, server_url, pool_size=BOUNCER_POOL)
    try:
        yield bouncer
    finally:
        bouncer.stop()


def scaling(
    url: URL, server_url: URL, worker_counts: tuple[int, ...], items: int
) -> Iterator[Figure]:
    """One figure per worker count (speed-up against one process), then through PgBouncer."""
    dsn = libpq_dsn(url)
    single: float | None = None
    for workers in worker_counts:
        rate, details = _step(url, dsn, workers, items)
        single = single or rate
        details["speedup"] = round(rate / single, 2)
        details["items_per_s_per_worker"] = round(rate / workers, 0)
        params = {"workers": workers, "batch": BATCH, "items": items}
        yield Figure("scaling", SYSTEM, params, rate, "items/s", details)
    with _pgbouncer(server_url) as bouncer:
        if bouncer is None:
            yield Figure("scaling", "retryqueue-pgbouncer", {}, None, "", skipped="no pgbouncer")
            return
        for workers in worker_counts[-2:]:
            rate, details = _step(url, dsn, workers, items, through=bouncer.url(url))
            details["speedup"] = round(rate / single, 2) if single else None
            details["pool"] = f"transaction, {BOUNCER_POOL} server connections, {bouncer.version}"
            params = {"workers": workers, "batch": BATCH, "items": items}
            yield Figure("scaling", "retryqueue-pgbouncer", params, rate, "items/s", details)


SIZES = {"quick": ((1, 2, 4, 8), 4_000), "full": ((1, 2, 4, 8, 16), 20_000)}
"""(worker counts, backlog) per plan mode."""
