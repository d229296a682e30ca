"""Shared fixtures: real SQLite, PostgreSQL and MySQL/MariaDB backends, sessions, queues."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import ManualClock, RetryQueue, create_engine, metadata, migrations
from retryqueue.models import (
    RetryCircuit,
    RetryCircuitEvent,
    RetryHistory,
    RetryItem,
    RetryLimit,
)
from tests.mysql.server import SKIP_REASON, MysqlServer
from tests.reliability.fleet import Fleet
from tests.support.logs import LogRecorder
from tests.support.servers import PostgresServer, server_version, start_postgres

BACKENDS = ("sqlite", "postgresql", "mysql")
_ran: dict[str, str] = {}


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """The PostgreSQL server of this run (embedded unless RETRYQUEUE_TEST_POSTGRES_URL)."""
    server = start_postgres()
    try:
        _ran["postgresql"] = f"{server_version(server.admin_url)} via {server.origin}"
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_url(pg_server: PostgresServer) -> URL:
    """A database migrated to head, shared by the contract tests (emptied per test)."""
    url = pg_server.create_database("rq_contract")
    engine = create_engine(url)
    migrations.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="session")
def mysql_server() -> MysqlServer:
    """The MySQL/MariaDB server of RETRYQUEUE_TEST_MYSQL_URL; skips the test when unset."""
    server = MysqlServer.from_environment()
    if server is None:
        pytest.skip(SKIP_REASON)
    _ran["mysql"] = f"{server.version()} via {MysqlServer.__module__}"
    return server


@pytest.fixture(scope="session")
def mysql_url(mysql_server: MysqlServer) -> Iterator[URL]:
    """A database of its own, migrated to head, shared by the contract tests."""
    url = mysql_server.create_database()
    try:
        engine = create_engine(url)
        migrations.upgrade(engine)
        engine.dispose()
        yield url
    finally:
        mysql_server.drop_database(url)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn."""
    return str(request.param)


@pytest.fixture
def engine(backend: str, request: pytest.FixtureRequest, tmp_path: object) -> Iterator[Engine]:
    """An engine on a database with the schema and no rows."""
    if backend == "sqlite":
        _ran.setdefault("sqlite", "file database per test")
        made = create_engine(f"sqlite:///{tmp_path}/queue.db")
        metadata.create_all(made)
    else:
        url = request.getfixturevalue("pg_url" if backend == "postgresql" else "mysql_url")
        made = create_engine(url, pool_size=10, max_overflow=10)
        with made.begin() as connection:
            for table in (RetryHistory, RetryItem, RetryCircuitEvent, RetryCircuit, RetryLimit):
                connection.execute(delete(table))
    yield made
    made.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    """A sessionmaker bound to the test database."""
    return sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when the test says so."""
    return ManualClock(datetime(2026, 1, 5, 9, 0, tzinfo=UTC))


@pytest.fixture
def queue(clock: ManualClock) -> RetryQueue:
    """A queue on the manual clock, so that tests control due times and lock expiry."""
    return RetryQueue(clock=clock)


@pytest.fixture
def server_clock_queue() -> RetryQueue:
    """A queue on its default clock (the database's on PostgreSQL)."""
    return RetryQueue()


def pytest_configure(config: pytest.Config) -> None:
    """Turn SIGTERM into an interrupt, so that fixtures still stop the servers they started."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which database backends this run exercised, and which it skipped."""
    lines = []
    for name in ("sqlite", "postgresql", "mysql"):
        how = _ran.get(name)
        lines.append(f"{name}: ran ({how})" if how else f"{name}: not run in this session")
    terminalreporter.write_sep("-", "database backends")
    for line in lines:
        terminalreporter.write_line(line)


@pytest.fixture
def worker_logs() -> Iterator[LogRecorder]:
    """Everything the worker logs during the test, DEBUG included."""
    logger = logging.getLogger("retryqueue.worker")
    recorder = LogRecorder()
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(recorder)
    try:
        yield recorder
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(previous)


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[Callable[[URL], Fleet]]:
    """Make fleets of worker processes; every process is stopped when the test ends."""
    fleets: list[Fleet] = []

    def make(url: URL) -> Fleet:
        directory = tmp_path / f"fleet{len(fleets)}"
        directory.mkdir()
        fleets.append(Fleet(directory, url))
        return fleets[-1]

    try:
        yield make
    finally:
        for fleet in fleets:
            fleet.close()
