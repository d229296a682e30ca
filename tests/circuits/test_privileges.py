"""The runtime role of ``grant_statements`` can run the breaker; it cannot delete its rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy
from sqlalchemy import Engine, delete
from sqlalchemy.engine import URL
from sqlalchemy.orm import sessionmaker

from retryqueue import CircuitBreaker, CircuitStatus, RetryQueue, create_engine, migrations
from retryqueue.models import RetryCircuitEvent
from tests.support.servers import PostgresServer

pytestmark = pytest.mark.postgres


def _admin(url: URL, statement: str) -> None:
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(statement)
    engine.dispose()


@pytest.fixture
def runtime(pg_server: PostgresServer) -> Iterator[Engine]:
    """An engine logged in as a role holding only the runtime GRANTs."""
    url = pg_server.create_database("rq_circuit_grants")
    role = f"rq_circuits_{uuid.uuid4().hex[:8]}"
    _admin(pg_server.admin_url, f'CREATE ROLE "{role}" LOGIN')
    owner = create_engine(url)
    migrations.upgrade(owner)
    with owner.begin() as connection:
        for statement in migrations.grant_statements(role):
            connection.exec_driver_sql(statement)
    engine = create_engine(url.set(username=role, password=None))
    try:
        yield engine
    finally:
        engine.dispose()
        owner.dispose()
        pg_server.drop_database(url)
        _admin(pg_server.admin_url, f'DROP ROLE IF EXISTS "{role}"')


def test_runtime_role_runs_the_breaker(runtime: Engine) -> None:
    sessions = sessionmaker(runtime)
    breaker = CircuitBreaker(failure_threshold=1, cooldown=0.001)
    with sessions.begin() as session:
        (opened,) = breaker.record(session, [("pay", "capture", False)])
        RetryQueue().enqueue(session, "capture", {}, plugin_name="pay")  # work to probe
    with sessions.begin() as session:
        gate = breaker.gate(session, owner="w")
        breaker.record(session, [("pay", "capture", True)])
        breaker.open(session, "mail")
        assert breaker.close(session, "mail").status is CircuitStatus.CLOSED
    assert opened.to_status is CircuitStatus.OPEN and gate.probes == ("pay",)
    with sessions.begin() as session, pytest.raises(sqlalchemy.exc.ProgrammingError):
        session.execute(delete(RetryCircuitEvent))


def test_runtime_role_runs_limits_and_pauses(runtime: Engine) -> None:
    sessions = sessionmaker(runtime)
    queue = RetryQueue()
    with sessions.begin() as session:
        queue.enqueue(session, "capture", {}, plugin_name="pay")
        queue.enqueue(session, "send", {}, plugin_name="mail")
        queue.set_limit(session, "pay", 1, burst=1)
        queue.pause_key(session, "mail", seconds=0.001)
    with sessions.begin() as session:  # the pause has ended
        claimed = queue.acquire(session, "w", 10)
    with sessions.begin() as session:
        assert queue.clear_limit(session, "pay") is None
        queue.pause_key(session, "pay", seconds=60)
        assert queue.resume_key(session, "pay") is None
    assert sorted(item.plugin_name or "" for item in claimed) == ["mail", "pay"]
