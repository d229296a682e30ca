"""Monthly partitioning: cleanup by DELETE vs by partition drop, and the claim on each table.

Two databases get the same rows: ``rows`` completed items finished 100 days ago (one old
month) and 10k pending items due now. One keeps the plain table and is cleaned up by
DELETE batches (the library's default batch of 1000, committed one by one); the other is
partitioned (``enable``, timed too) and cleaned up by dropping the old month. Acquire
latency (batch 10, each batch completed) is measured on both tables before and after their
cleanup; the plain table's autovacuum is off, so "after" is the bloated table a busy queue
sees between vacuums.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from sqlalchemy.engine import URL
from sqlalchemy.orm import sessionmaker

from benchmarks import scenarios, seed
from benchmarks.harness import Figure
from benchmarks.server import BenchServer
from retryqueue import migrations
from retryqueue.engine import create_engine
from retryqueue.queue import RetryQueue

SYSTEM = "retryqueue"
PENDING = 10_000
ROUNDS = 200
RETENTION_DAYS = 30


def figures(server: BenchServer, rows: int) -> list[Figure]:
    """The cleanup and claim-latency figures for ``rows`` old rows."""
    plain_url, plain_dsn = _seeded(server, "bench_plain", rows)
    parted_url, parted_dsn = _seeded(server, "bench_parted", rows)
    try:
        engine = create_engine(parted_url)
        began = time.perf_counter()
        result = migrations.enable_partitioning(engine)
        enable_seconds = time.perf_counter() - began
        engine.dispose()
        _execute(parted_dsn, "VACUUM ANALYZE daz_retry_queue")
        _execute(plain_dsn, "ALTER TABLE daz_retry_queue SET (autovacuum_enabled = false)")
        latency = {
            ("plain", "before"): scenarios.acquire_latency(plain_url, ROUNDS),
            ("partitioned", "before"): scenarios.acquire_latency(parted_url, ROUNDS),
        }
        by_delete = _cleanup(plain_url)
        by_drop = _cleanup(parted_url)
        latency["plain", "after"] = scenarios.acquire_latency(plain_url, ROUNDS)
        latency["partitioned", "after"] = scenarios.acquire_latency(parted_url, ROUNDS)
        sizes = {"plain": _size(plain_dsn), "partitioned": _size(parted_dsn)}
    finally:
        server.drop_database(plain_url)
        server.drop_database(parted_url)
    found = [
        Figure(
            "partition_enable",
            SYSTEM,
            {"rows": rows + PENDING},
            enable_seconds,
            "s",
            {
                "rows_per_s": result.rows_copied / enable_seconds,
                "partitions": len(result.partitions),
            },
        ),
        Figure(
            "cleanup_old_rows",
            "DELETE batches",
            {"old_rows": rows, "batch": 1000},
            by_delete["seconds"],
            "s",
            by_delete,
        ),
        Figure(
            "cleanup_old_rows",
            "partition drop",
            {"old_rows": rows},
            by_drop["seconds"],
            "s",
            {**by_drop, "ratio_delete_over_drop": by_delete["seconds"] / by_drop["seconds"]},
        ),
    ]
    for (table, when), stats in latency.items():
        found.append(
            Figure(
                "claim_latency",
                f"{table} table",
                {"when": f"{when} cleanup", "pending": PENDING, "batch": 10, "rounds": ROUNDS},
                stats["p50_ms"],
                "ms p50",
                {**stats, "table_mib": sizes[table] if when == "after" else None},
            )
        )
    return found


def _seeded(server: BenchServer, name: str, rows: int) -> tuple[URL, str]:
    url = server.create_database(name)
    dsn = seed.prepared_database(url)
    seed.seed(dsn, rows, status="completed", age_days=100)
    seed.seed(dsn, PENDING)
    return url, dsn


def _cleanup(url: URL) -> dict[str, Any]:
    """Run the library's cleanup, committing every part; time it, and time to first drop."""
    engine = create_engine(url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    deleted = dropped = 0
    first_drop: float | None = None
    began = time.perf_counter()
    try:
        with sessions() as session:
            for part in RetryQueue().iter_cleanup(session, retention_days=RETENTION_DAYS):
                session.commit()
                deleted += part.deleted_count
                dropped += part.partitions_dropped
                if part.partitions_dropped and first_drop is None:
                    first_drop = time.perf_counter() - began
    finally:
        engine.dispose()
    seconds = time.perf_counter() - began
    out: dict[str, Any] = {"seconds": seconds, "deleted": deleted, "partitions_dropped": dropped}
    if first_drop is not None:  # the exclusive lock is held this long, at most
        out["first_drop_ms"] = 1000 * first_drop
    out["rows_per_s"] = deleted / seconds if seconds else None
    return out


def _execute(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)  # type: ignore[arg-type]


def _size(dsn: str) -> float:
    """The queue table's size with indexes, MiB (a partitioned table: all its partitions)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) "
            "FROM pg_partition_tree('daz_retry_queue') WHERE isleaf), "
            "pg_total_relation_size('daz_retry_queue'))"
        ).fetchone()
    return float(row[0]) / 2**20 if row else 0.0
