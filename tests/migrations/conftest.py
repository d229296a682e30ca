"""An empty database of each backend, for the migration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from retryqueue import create_engine
from tests.mysql.server import MysqlServer
from tests.support.servers import PostgresServer


@pytest.fixture
def empty_engine(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on an empty database of each backend."""
    if backend == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path}/migrate.db")
        yield engine
        engine.dispose()
        return
    server: PostgresServer | MysqlServer = request.getfixturevalue(
        "pg_server" if backend == "postgresql" else "mysql_server"
    )
    url = server.create_database("rq_migrate")
    engine = create_engine(url)
    yield engine
    engine.dispose()
    server.drop_database(url)
