"""Fixtures of the scale-out tests: PgBouncer (transaction pooling) in front of PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import create_engine, migrations
from tests.support.pgbouncer import SKIP_REASON, PgBouncer, find_pgbouncer, start_pgbouncer
from tests.support.servers import PostgresServer

# Fewer server connections than the worker processes' clients: PgBouncer must multiplex.
POOL_SIZE = 4
DIRECT = "retryqueue-tests-direct"  # application_name of the direct connections
_outcome: dict[str, str] = {}


@dataclass(frozen=True)
class BouncedDatabase:
    """A migrated database, reached directly and through PgBouncer."""

    direct_url: URL
    bounced_url: URL
    direct: Engine
    bounced: Engine
    sessions: sessionmaker[Session]  # through PgBouncer


@pytest.fixture(scope="session")
def pgbouncer(pg_server: PostgresServer) -> Iterator[PgBouncer]:
    """This run's own PgBouncer; skips the test when the binary is not installed."""
    binary = find_pgbouncer()
    if binary is None:
        _outcome["pgbouncer"] = f"skipped: {SKIP_REASON}"
        pytest.skip(SKIP_REASON)
    bouncer = start_pgbouncer(binary, pg_server.admin_url, pool_size=POOL_SIZE)
    _outcome["pgbouncer"] = (
        f"ran ({bouncer.version}, pool_mode=transaction, default_pool_size={POOL_SIZE})"
    )
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def bounced_db(pg_server: PostgresServer, pgbouncer: PgBouncer) -> Iterator[BouncedDatabase]:
    """A fresh database migrated to head (directly); its engines; dropped afterwards."""
    url = pg_server.create_database("rq_pgbouncer")
    direct = create_engine(url, pool_size=2, connect_args={"application_name": DIRECT})
    bounced_url = pgbouncer.url(url)
    bounced = create_engine(bounced_url, pgbouncer=True, pool_size=4)
    try:
        migrations.upgrade(direct)
        yield BouncedDatabase(
            url, bounced_url, direct, bounced, sessionmaker(bounced, expire_on_commit=False)
        )
    finally:
        bounced.dispose()
        direct.dispose()
        pg_server.drop_database(url)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say whether the PgBouncer tests ran, and why not when they skipped."""
    if _outcome:
        terminalreporter.write_sep("-", "pgbouncer")
        terminalreporter.write_line(f"pgbouncer: {_outcome['pgbouncer']}")
