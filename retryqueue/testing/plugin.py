"""The pytest plugin: fixtures for testing code that uses the queue.

Registered through the ``pytest11`` entry point, so installing retryqueue is enough — no
conftest code. Fixtures:

``rq_database_url``
    ``sqlite://`` (in memory) unless the environment variable ``RETRYQUEUE_TESTING_URL``
    or the test's marker ``@pytest.mark.retryqueue(database_url=...)`` names another
    database (e.g. PostgreSQL), or you override the fixture.
``rq_engine``
    An engine on that database with the schema created (tables are created if missing;
    on SQLite a fresh in-memory database per test).
``rq_session``
    A Session inside a transaction that is rolled back after the test. The queue's calls
    never commit, so nothing a test does survives it.
``rq_clock``
    A :class:`~retryqueue.clock.ManualClock` starting at the current second; backoff, due
    times, lock expiry, cleanup retention and alerts all follow it.
``rq_queue``
    A :class:`~retryqueue.queue.RetryQueue` on ``rq_clock``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from retryqueue.clock import ManualClock
from retryqueue.engine import create_engine
from retryqueue.models import metadata
from retryqueue.queue import RetryQueue

__all__ = ["rq_clock", "rq_database_url", "rq_engine", "rq_queue", "rq_session"]

URL_ENV = "RETRYQUEUE_TESTING_URL"
_shared_engines: dict[str, Engine] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Declare the ``retryqueue`` marker."""
    config.addinivalue_line(
        "markers", "retryqueue(database_url): run this test's rq_* fixtures on that database"
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    """Dispose the engines shared between tests."""
    for engine in _shared_engines.values():
        engine.dispose()
    _shared_engines.clear()


@pytest.fixture
def rq_database_url(request: pytest.FixtureRequest) -> str:
    """The database the rq_* fixtures use (in-memory SQLite by default)."""
    marker = request.node.get_closest_marker("retryqueue")
    if marker is not None and "database_url" in marker.kwargs:
        return str(marker.kwargs["database_url"])
    return os.environ.get(URL_ENV) or "sqlite://"


@pytest.fixture
def rq_engine(rq_database_url: str) -> Iterator[Engine]:
    """An engine with the queue's tables (fresh per test for in-memory SQLite)."""
    if rq_database_url in ("sqlite://", "sqlite:///:memory:"):
        engine = create_engine(rq_database_url)
        metadata.create_all(engine)
        yield engine
        engine.dispose()
        return
    if rq_database_url not in _shared_engines:
        shared = create_engine(rq_database_url)
        metadata.create_all(shared)
        _shared_engines[rq_database_url] = shared
    yield _shared_engines[rq_database_url]


@pytest.fixture
def rq_clock() -> ManualClock:
    """A clock that moves only when the test says so."""
    return ManualClock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def rq_queue(rq_clock: ManualClock) -> RetryQueue:
    """A RetryQueue whose time is ``rq_clock``."""
    return RetryQueue(clock=rq_clock)


@pytest.fixture
def rq_session(rq_engine: Engine, rq_clock: ManualClock) -> Iterator[Session]:
    """A Session in a transaction that is rolled back when the test ends.

    Code under test may call ``session.commit()``: with savepoints, even that is undone.
    The factories of :mod:`retryqueue.testing.factories` are bound to this session.
    """
    connection = rq_engine.connect()
    transaction = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint")
    unbind = _bind_factories(session, rq_clock)
    try:
        yield session
    finally:
        unbind()
        session.close()
        transaction.rollback()
        connection.close()


def _bind_factories(session: Session, clock: ManualClock) -> Callable[[], None]:
    try:
        from retryqueue.testing import factories
    except ImportError:  # factory-boy is optional
        return lambda: None
    bound = (factories.RetryItemFactory, factories.RetryHistoryFactory)
    for factory_class in bound:
        factory_class._meta.sqlalchemy_session = session
    factories.use_clock(clock)

    def unbind() -> None:
        for factory_class in bound:
            factory_class._meta.sqlalchemy_session = None
        factories.use_clock(None)

    return unbind
