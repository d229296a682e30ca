"""Fixtures of the dashboard tests: a seeded database and a Starlette test client."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient

from retryqueue.models import RetryDashboardAudit, RetryHourlyOutcome, RetryItem, RetryWorker
from retryqueue.queue import RetryQueue
from retryqueue.web import Credentials, create_app
from retryqueue.web.access import CSRF_COOKIE, CSRF_FIELD


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    """A sessionmaker on an empty database, the dashboard's own tables emptied too."""
    with engine.begin() as connection:
        connection.execute(delete(RetryDashboardAudit))
        connection.execute(delete(RetryWorker))
        connection.execute(delete(RetryHourlyOutcome))
    return sessionmaker(engine, expire_on_commit=False)


@dataclass
class Seeded:
    """Items made by :func:`seed`: ids by name."""

    sessions: sessionmaker[Session]
    queue: RetryQueue = field(default_factory=RetryQueue)
    ids: dict[str, list[int]] = field(default_factory=dict)

    def add(
        self,
        name: str,
        count: int,
        *,
        dead: str | None = None,
        code: str = "HTTP_ERROR",
        event_type: str = "order.created",
        **fields: Any,
    ) -> list[int]:
        """``count`` pending items; dead-lettered with message ``dead`` if given ({n}: a
        number 1..250 from the item's id, so that it is also a valid IP octet)."""
        made: list[int] = []
        with self.sessions.begin() as session:
            for _ in range(count):
                item = self.queue.enqueue(
                    session, event_type, {"n": len(made), "name": name}, max_retries=0, **fields
                )
                made.append(item.id)
        if dead is not None:
            with self.sessions.begin() as session:
                claimed = self.queue.acquire(session, "seed-worker", batch_size=len(made) + 10)
                for claim in claimed:
                    if claim.id in made:
                        message = dead.format(
                            n=claim.id % 250 + 1
                        )  # an IP octet too, whatever the id
                        self.queue.fail(
                            session,
                            claim,
                            error_message=message,
                            error_code=code,
                            exception_type="builtins.ConnectionError",
                            error_traceback="Traceback (most recent call last):\n  boom\n",
                        )
                    else:
                        self.queue.release(
                            session, "seed-worker", [claim.id], lease_token=claim.lease_token
                        )
        self.ids.setdefault(name, []).extend(made)
        return made

    def statuses(self) -> dict[int, str]:
        """Every item's status by id."""
        with self.sessions() as session:
            rows = session.execute(select(RetryItem.id, RetryItem.status)).all()
        return {row.id: row.status.value for row in rows}


@pytest.fixture
def seeded(sessions: sessionmaker[Session]) -> Seeded:
    """An empty database with a helper to add items."""
    return Seeded(sessions)


def csrf_of(client: TestClient) -> str:
    """The CSRF token the dashboard handed the client (visiting a page first)."""
    client.get("/")
    token = client.cookies.get(CSRF_COOKIE)
    assert token
    return token


@pytest.fixture
def client(sessions: sessionmaker[Session]) -> Iterator[TestClient]:
    """A test client of a full-access dashboard on the test database."""
    with TestClient(create_app(sessions), raise_server_exceptions=True) as test_client:
        yield test_client


def make_client(sessions: sessionmaker[Session], **options: Any) -> TestClient:
    """A test client of a dashboard with other options (credentials, read_only)."""
    return TestClient(create_app(sessions, **options))


__all__ = ["CSRF_FIELD", "Credentials", "Seeded", "csrf_of", "make_client"]
