"""A PostgreSQL database of its own for the kit's tests (the kit creates the tables)."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import URL

from tests.support.servers import PostgresServer


@pytest.fixture(scope="session")
def kit_pg_url(pg_server: PostgresServer) -> URL:
    """An empty database: the kit's rq_engine fixture creates the schema in it."""
    return pg_server.create_database("rq_kit")
