"""Fixtures of the multi-process reliability tests: a database of their own, worker fleets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import sessionmaker

from retryqueue import create_engine, migrations
from tests.reliability.fleet import Database
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
