"""Least privilege: a runtime role with only the DML it needs runs the worker; no DDL."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy
from sqlalchemy import Engine, delete, func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import sessionmaker

from retryqueue import (
    DatabaseError,
    NewItem,
    RetryQueue,
    RetryStatus,
    browsing,
    create_engine,
    migrations,
)
from retryqueue.models import RetryHistory, RetryItem, RetryWorker
from retryqueue.worker import Worker
from tests.cli.conftest import invoke_cli
from tests.support.servers import PostgresServer
from tests.support.waiting import wait_until
from tests.worker.conftest import running

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


def test_runtime_role_worker_is_listed_and_leaves_without_delete(roles: Roles) -> None:
    """The registry needs no DELETE: a worker under the runtime role is listed by
    ``retryqueue workers`` while it runs, not after it stops; cleanup (maintenance role)
    deletes its row."""
    sessions = sessionmaker(roles.runtime, expire_on_commit=False)
    runtime_url = roles.runtime.url.render_as_string(hide_password=False)

    def listed() -> list[str]:
        result = invoke_cli(runtime_url, "workers", "--json")
        assert result.exit_code == 0, result.output
        return [row["worker_id"] for row in json.loads(result.stdout)]

    worker = Worker(RetryQueue(), sessions, {}, worker_id="least-privileged", poll_interval=0.05)
    with running(worker) as handle:
        wait_until(lambda: listed() == ["least-privileged"], what="the runtime worker listed")
        handle.stop()
    assert listed() == []
    with sessionmaker(roles.owner)() as session:  # stopped, not deleted
        assert session.scalar(select(func.count()).select_from(RetryWorker)) == 1
    with sessionmaker(roles.maintenance).begin() as session:
        assert RetryQueue().cleanup(session, retention_days=1).worker_rows_deleted == 1
    with (
        sessionmaker(roles.runtime).begin() as session,
        pytest.raises(sqlalchemy.exc.ProgrammingError, match="permission denied"),
    ):
        session.execute(delete(RetryWorker))  # still no DELETE for the runtime role


def test_runtime_role_can_serve_the_dashboard(roles: Roles) -> None:
    """Audit records of actions and the charts' roll-up work under the runtime role."""
    sessions = sessionmaker(roles.runtime, expire_on_commit=False)
    with sessions.begin() as session:
        audit_id = browsing.record_action(
            session, None, actor="ops", action="replay", selection=None, requested=1
        )
        browsing.finish_action(session, None, audit_id, 1, finished=True)
        assert browsing.audit_log(session)[0].affected == 1
        assert browsing.roll_up(session, None, 3, limit=1) == 1
