"""Fixtures of the multi-process reliability tests: a database of their own, worker fleets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL
from sqlalchemy.orm import sessionmaker

from retryqueue import create_engine, migrations
from tests.reliability.fleet import Database, Fleet
from tests.support.servers import PostgresServer


@pytest.fixture
def dedicated_db(pg_server: PostgresServer) -> Iterator[Database]:
    """A fresh database migrated to head, for one test only (dropped afterwards)."""
    url = pg_server.create_database("rq_reliability")
    engine = create_engine(url, pool_size=4)
    try:
        migrations.upgrade(engine)
        yield Database(url, engine, sessionmaker(engine, expire_on_commit=False))
    finally:
        engine.dispose()
        pg_server.drop_database(url)


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
