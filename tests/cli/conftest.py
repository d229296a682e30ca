"""Fixtures for the CLI tests: a runner bound to the test database, and a seeder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner, Result

from retryqueue import ManualClock, RetryQueue, RetryStatus
from retryqueue.cli import CliDeps, app
from retryqueue.models import RetryHistory, RetryItem

Invoke = Callable[..., Result]


def invoke_cli(
    url: str, *args: str, input: str | None = None, deps: CliDeps | None = None
) -> Result:
    """Run ``retryqueue --database-url URL ARGS`` in-process."""
    return CliRunner().invoke(
        app, ["--database-url", url, *args], input=input, obj=deps, catch_exceptions=False
    )


@pytest.fixture
def database_url(engine: Engine) -> str:
    """The test database's URL, password included, as a user would type it."""
    return engine.url.render_as_string(hide_password=False)


@pytest.fixture
def cli(database_url: str) -> Invoke:
    """Invoke the CLI against the test database."""

    def run(*args: str, input: str | None = None, deps: CliDeps | None = None) -> Result:
        return invoke_cli(database_url, *args, input=input, deps=deps)

    return run


@dataclass
class Seeder:
    """Puts items into given states through the queue API, at chosen ages."""

    sessions: sessionmaker[Session]
    ids: list[int] = field(default_factory=list)

    def item(
        self,
        status: RetryStatus,
        *,
        event_type: str = "chat.message",
        plugin: str | None = "slack",
        channel: str | None = "general",
        error_code: str | None = None,
        error: str = "boom",
        age: timedelta = timedelta(0),
        retry_count: int = 0,
    ) -> int:
        """One item in ``status``, created (and finished or locked) ``age`` ago."""
        queue = RetryQueue(clock=ManualClock(datetime.now(UTC) - age))
        final = status is not RetryStatus.PENDING
        with self.sessions.begin() as session:
            item_id = queue.enqueue(
                session,
                event_type,
                {"text": "hello"},
                plugin_name=plugin,
                channel_name=channel,
                max_retries=retry_count,
                retry_delay_seconds=0,
                priority=10 if final else 5,
            ).id
        attempts = retry_count + 1 if status is RetryStatus.DEAD_LETTER else int(final)
        for attempt in range(attempts):
            with self.sessions.begin() as session:
                (claimed,) = queue.acquire(session, "seed-worker", batch_size=1, lock_timeout=1e7)
                assert claimed.id == item_id
                if status is RetryStatus.PROCESSING:
                    break
                if status is RetryStatus.COMPLETED:
                    queue.complete(session, claimed)
                elif status is RetryStatus.FAILED:
                    queue.fail(
                        session,
                        claimed,
                        error_message=error,
                        error_code=error_code,
                        retryable=False,
                    )
                else:
                    queue.fail(
                        session,
                        claimed,
                        error_message=f"{error} #{attempt + 1}",
                        error_code=error_code,
                    )
        self.ids.append(item_id)
        return item_id

    def statuses(self) -> dict[int, str]:
        """Every item's status by id."""
        with self.sessions() as session:
            rows = session.execute(select(RetryItem.id, RetryItem.status)).all()
        return {item_id: RetryStatus(status).value for item_id, status in rows}

    def row(self, item_id: int) -> Any:
        """One queue row's columns."""
        with self.sessions() as session:
            return session.execute(
                select(RetryItem.status, RetryItem.retry_count, RetryItem.next_retry_at).where(
                    RetryItem.id == item_id
                )
            ).one()

    def history_statuses(self, item_id: int) -> list[tuple[str, str | None]]:
        """An item's history as (status, worker_id), oldest first."""
        with self.sessions() as session:
            return [
                (status, worker)
                for status, worker in session.execute(
                    select(RetryHistory.status, RetryHistory.worker_id)
                    .where(RetryHistory.retry_queue_id == item_id)
                    .order_by(RetryHistory.id)
                )
            ]

    def count(self) -> int:
        """Queue rows in total."""
        with self.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(RetryItem)) or 0)


@pytest.fixture
def seed(sessions: sessionmaker[Session]) -> Seeder:
    """A seeder on the test database."""
    return Seeder(sessions)


@pytest.fixture
def empty_database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A database without the queue's tables (a new SQLite file, or a new PostgreSQL db)."""
    if backend == "sqlite":
        (tmp_path / "fresh.db").touch()  # an existing, empty database file
        return f"sqlite:///{tmp_path}/fresh.db"
    server = request.getfixturevalue("pg_server")
    return str(server.create_database("rq_cli").render_as_string(hide_password=False))
