"""The dashboard's pages on a big queue: server time per page on PostgreSQL.

``python -m benchmarks.dashboard [--items 1000000] [--database-url URL] [--rounds 7]``

Seeds ``items`` queue rows (85 % completed, 10 % dead letters in 40 error groups, 5 %
pending) and as many history rows spread over the last two days, then renders every page
in-process (Starlette's test client: no network, so the time is the server's) and prints
the median and worst of ``rounds`` renders after one warm-up. Target: under 150 ms each.
Without a URL it starts an embedded PostgreSQL and stops it at the end.
"""

from __future__ import annotations

import argparse
import statistics
import time

import psycopg
from starlette.testclient import TestClient

from benchmarks import seed
from benchmarks.server import bench_server
from retryqueue.engine import create_engine
from retryqueue.web import create_app

SEED_ITEMS = """
INSERT INTO daz_retry_queue (
    event_id, event_type, plugin_name, channel_name, event_data, status, created_at,
    next_retry_at, expires_at, completed_at, last_attempted_at, retry_count, max_retries,
    last_error_code, error_message, error_fingerprint, correlation_id
)
SELECT gen_random_uuid(),
       'event.' || (g %% 12), 'plugin' || (g %% 7), 'channel' || (g %% 3),
       jsonb_build_object('i', g),
       (CASE WHEN g %% 20 = 0 THEN 'pending' WHEN g %% 10 = 1 THEN 'dead_letter'
             ELSE 'completed' END)::retry_status,
       now() - (g %% 172800) * interval '1 second',
       now() - (g %% 600) * interval '1 second',
       now() + interval '7 days',
       CASE WHEN g %% 10 > 1 AND g %% 20 <> 0 THEN now() - (g %% 172800) * interval '1 second' END,
       now() - (g %% 172800) * interval '1 second',
       CASE WHEN g %% 10 = 1 THEN 3 ELSE 0 END, 3,
       CASE WHEN g %% 10 = 1 THEN 'E' || (g %% 40) END,
       CASE WHEN g %% 10 = 1 THEN 'upstream failed for order ' || g END,
       CASE WHEN g %% 10 = 1 THEN lpad(to_hex(g %% 40), 16, '0') END,
       'req-' || g
FROM generate_series(1, %(count)s) AS g
"""

SEED_HISTORY = """
INSERT INTO daz_retry_history (
    retry_queue_id, event_id, attempt_number, status, error_code, error_message,
    error_fingerprint, worker_id, attempted_at, duration_ms
)
SELECT q.id, q.event_id, 1,
       CASE WHEN q.status = 'dead_letter' THEN 'dead_lettered' ELSE 'completed' END,
       q.last_error_code, q.error_message, q.error_fingerprint, 'worker-' || (q.id % 8),
       q.last_attempted_at, 20
FROM daz_retry_queue q
"""

PAGES = (
    ("overview", "/"),
    ("overview (live part)", "/overview/live"),
    ("items", "/items"),
    ("items, filtered", "/items?status=dead_letter&plugin=plugin3"),
    ("items, sorted by created", "/items?sort=created_at&order=asc"),
    ("item", "/items/{item_id}"),
    ("dead letters", "/dead-letters"),
    ("circuits", "/circuits"),
    ("throughput", "/throughput"),
    ("workers", "/workers"),
    ("audit", "/audit"),
)


def main() -> None:
    """Seed, render every page, print a table of server times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--database-url")
    args = parser.parse_args()
    with bench_server(args.database_url) as server:
        url = server.create_database("bench_dashboard")
        dsn = seed.prepared_database(url)
        started = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SEED_ITEMS, {"count": args.items})
            conn.execute(SEED_HISTORY)
            conn.execute("VACUUM ANALYZE daz_retry_queue")
            conn.execute("VACUUM ANALYZE daz_retry_history")
            item_id = conn.execute("SELECT max(id) FROM daz_retry_queue").fetchone()[0]  # type: ignore[index]
        print(f"seeded {args.items:,} items + {args.items:,} history rows "
              f"in {time.perf_counter() - started:.0f} s")  # fmt: skip
        engine = create_engine(url)
        try:
            with TestClient(create_app(engine)) as client:
                print(f"{'page':28} {'median ms':>10} {'worst ms':>10}")
                for name, path in PAGES:
                    target = path.format(item_id=item_id)
                    assert client.get(target).status_code == 200, target
                    times = []
                    for _ in range(args.rounds):
                        begin = time.perf_counter()
                        response = client.get(target)
                        times.append((time.perf_counter() - begin) * 1000)
                        assert response.status_code == 200
                    print(f"{name:28} {statistics.median(times):10.1f} {max(times):10.1f}")
        finally:
            engine.dispose()


if __name__ == "__main__":
    main()
