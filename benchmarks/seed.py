"""Schema and bulk seeding of ``daz_retry_queue`` for the benchmarks.

Seeding is plain SQL (``INSERT ... SELECT generate_series``) so that millions of rows take
seconds; the rows have the same shape as :meth:`RetryQueue.enqueue_many` writes with its
defaults. Enqueue throughput itself is measured separately, through the library.
"""

from __future__ import annotations

import psycopg
from sqlalchemy.engine import URL

from benchmarks.server import libpq_dsn
from retryqueue import migrations
from retryqueue.engine import create_engine

EVENT_TYPE = "bench.noop"


def migrate(url: URL) -> None:
    """Create retryqueue's schema through its own migrations."""
    engine = create_engine(url)
    try:
        migrations.upgrade(engine)
    finally:
        engine.dispose()


def reset(dsn: str) -> None:
    """Empty both tables (between scenarios)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE daz_retry_queue, daz_retry_history RESTART IDENTITY")


def seed(dsn: str, count: int, *, status: str = "pending", age_days: float = 0.0) -> None:
    """Insert ``count`` no-op items due now (or finished ``age_days`` ago), then ANALYZE.

    Due times step by 1 ms every 1000 rows, as if enqueued by ``enqueue_many`` in chunks
    of 1000 (rows of one transaction share its ``now()``).
    """
    finished = status != "pending"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO daz_retry_queue (
                event_id, event_type, event_data, status, created_at, next_retry_at,
                expires_at, completed_at, last_attempted_at, retry_count
            )
            SELECT gen_random_uuid(), %(event_type)s, jsonb_build_object('i', g),
                   %(status)s::retry_status,
                   now() - %(age)s * interval '1 day',
                   now() - %(age)s * interval '1 day'
                       - ((%(count)s - g) / 1000) * interval '1 millisecond',
                   now() + interval '7 days',
                   CASE WHEN %(finished)s THEN now() - %(age)s * interval '1 day' END,
                   CASE WHEN %(finished)s THEN now() - %(age)s * interval '1 day' END,
                   0
            FROM generate_series(1, %(count)s) AS g
            """,
            {
                "event_type": EVENT_TYPE,
                "status": status,
                "age": age_days,
                "finished": finished,
                "count": count,
            },
        )
        conn.execute("VACUUM ANALYZE daz_retry_queue")


def terminal_count_query() -> str:
    """The COUNT of items in a terminal state (what a drain is timed against)."""
    return (
        "SELECT count(*) FROM daz_retry_queue "
        "WHERE status IN ('completed', 'failed', 'dead_letter')"
    )


def prepared_database(url: URL) -> str:
    """Migrate ``url`` and return its libpq DSN."""
    migrate(url)
    return libpq_dsn(url)
