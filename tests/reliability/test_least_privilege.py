"""Least privilege: a runtime role with only the DML it needs runs the worker; no DDL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import sessionmaker

from retryqueue import DatabaseError, NewItem, RetryQueue, RetryStatus, create_engine, migrations
from retryqueue.models import RetryHistory, RetryItem
from retryqueue.worker import Worker
from tests.support.servers import PostgresServer

pytestmark = pytest.mark.reliability


@dataclass
class Roles:
    owner: Engine
    runtime: Engine
    maintenance: Engine


def _create_role(admin: URL, name: str) -> None:
    engine = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f'CREATE ROLE "{name}" LOGIN')
    engine.dispose()


def _drop_role(admin: URL, name: str) -> None:
    engine = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f'DROP ROLE IF EXISTS "{name}"')
    engine.dispose()


@pytest.fixture
def roles(pg_server: PostgresServer) -> Iterator[Roles]:
    """A migrated database, a runtime role and a maintenance role with their GRANTs only."""
    url = pg_server.create_database("rq_grants")
    suffix = uuid.uuid4().hex[:8]
    runtime, maintenance = f"rq_runtime_{suffix}", f"rq_maint_{suffix}"
    for name in (runtime, maintenance):
        _create_role(pg_server.admin_url, name)
    owner = create_engine(url)
    migrations.upgrade(owner)
    with owner.begin() as connection:
        for statement in migrations.grant_statements(runtime):
            connection.exec_driver_sql(statement)
        for statement in migrations.grant_statements(maintenance, maintenance=True):
            connection.exec_driver_sql(statement)
    made = Roles(
        owner,
        create_engine(url.set(username=runtime, password=None)),
        create_engine(url.set(username=maintenance, password=None)),
    )
    try:
        yield made
    finally:
        for engine in (made.owner, made.runtime, made.maintenance):
            engine.dispose()
        pg_server.drop_database(url)
        for name in (runtime, maintenance):
            _drop_role(pg_server.admin_url, name)


def test_runtime_role_runs_the_worker_but_cannot_delete_or_alter(roles: Roles) -> None:
    sessions = sessionmaker(roles.runtime, expire_on_commit=False)
    queue = RetryQueue()
    with sessions.begin() as session:
        assert session.scalar(select(func.current_user())).startswith("rq_runtime_")
        queue.enqueue_many(session, [NewItem("job", {"i": i}) for i in range(25)])
        queue.enqueue(session, "doomed", {}, max_retries=0)

    def fail(job: object) -> None:
        raise RuntimeError("boom")

    worker = Worker(queue, sessions, {"job": lambda job: None, "doomed": fail}, listen=True)
    while worker.run_once().acquired:
        pass
    with sessions() as session:
        statuses = dict(
            session.execute(select(RetryItem.status, func.count()).group_by(RetryItem.status)).all()
        )
        attempts = session.scalar(select(func.count()).select_from(RetryHistory))
    assert statuses == {RetryStatus.COMPLETED: 25, RetryStatus.DEAD_LETTER: 1}
    assert attempts == 26

    with sessions.begin() as session:  # replaying is an UPDATE: allowed
        assert len(queue.requeue(session, [next(iter(_dead_ids(roles)))])) == 1
    with sessions() as session, pytest.raises(DatabaseError, match="permission denied"):
        queue.cleanup(session, retention_days=0)
    with roles.runtime.connect() as connection, pytest.raises(sqlalchemy.exc.ProgrammingError):
        connection.execute(text("CREATE TABLE sneaky (id int)"))
    with roles.runtime.connect() as connection, pytest.raises(sqlalchemy.exc.ProgrammingError):
        connection.execute(text("ALTER TABLE daz_retry_queue ADD COLUMN sneaky int"))
    with pytest.raises(DatabaseError, match="permission denied"):
        migrations.downgrade(roles.runtime, "retryqueue@base")


def test_maintenance_role_may_clean_up(roles: Roles) -> None:
    queue = RetryQueue()
    runtime = sessionmaker(roles.runtime)
    with runtime.begin() as session:
        queue.enqueue(session, "job", {})
    with runtime.begin() as session:
        (claimed,) = queue.acquire(session, "w1")
        queue.complete(session, claimed)
    with sessionmaker(roles.maintenance).begin() as session:
        assert queue.cleanup(session, retention_days=0).deleted_count == 1
    with (
        roles.maintenance.connect() as connection,
        pytest.raises(sqlalchemy.exc.ProgrammingError, match="must be owner"),
    ):
        connection.execute(text("DROP TABLE daz_retry_history"))  # still no DDL


def _dead_ids(roles: Roles) -> list[int]:
    with sessionmaker(roles.owner)() as session:
        return list(
            session.scalars(select(RetryItem.id).where(RetryItem.status == RetryStatus.DEAD_LETTER))
        )
