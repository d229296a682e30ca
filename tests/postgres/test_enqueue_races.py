"""PostgreSQL only: enqueue's idempotency under races, on the plain and the partitioned table.

The INSERT skips a taken event_id; enqueue then reads the holder's id. If the holder is
purged (or cleaned up) in between, the event_id is free again: it is inserted anew, never
a bare KeyError. A row skipped for any other conflict (an id the sequence hands out again)
raises a DatabaseError naming the constraint, instead of vanishing.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import (
    DatabaseError,
    EnqueueRaceError,
    ManualClock,
    NewItem,
    RetryQueue,
    create_engine,
    migrations,
)
from tests.partitioning.conftest import NOW
from tests.support.servers import PostgresServer


@pytest.fixture(params=["plain", "partitioned"])
def table(request: pytest.FixtureRequest) -> str:
    """Each kind of queue table."""
    return str(request.param)


@pytest.fixture
def pg_engine(table: str, pg_server: PostgresServer) -> Iterator[Engine]:
    """A new database at head; partitioned for the second parameter."""
    url = pg_server.create_database("rq_enqueue_race")
    engine = create_engine(url, pool_size=5, max_overflow=5)
    migrations.upgrade(engine)
    if table == "partitioned":
        migrations.enable_partitioning(engine, now=NOW)
    yield engine
    engine.dispose()
    pg_server.drop_database(url)


@pytest.fixture
def sessions(pg_engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(pg_engine, expire_on_commit=False)


def purge_before_lookup(session: Session, purge: Any, times: int = 1) -> None:
    """Run ``purge`` (committed elsewhere) just before enqueue looks the holder up."""
    left = [times]

    def hook(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if left[0] and statement.lstrip().startswith("SELECT daz_retry_queue.id"):
            left[0] -= 1
            purge()

    event.listen(session.connection(), "before_cursor_execute", hook)


class TestVanishedHolder:
    """The holder of the event_id disappears between the INSERT and the look-up."""

    def test_the_item_is_inserted_anew(self, sessions: sessionmaker[Session]) -> None:
        queue = RetryQueue(clock=ManualClock(NOW))
        event_id = uuid.uuid4()
        with sessions.begin() as session:
            first = queue.enqueue(session, "a", {"n": 1}, event_id=event_id)

        def purge() -> None:
            with sessions.begin() as other:
                assert queue.purge(other, [first.id]) == [first.id]

        with sessions.begin() as session:
            purge_before_lookup(session, purge)
            again, twin = queue.enqueue_many(
                session,
                [NewItem("b", {"n": 2}, event_id=event_id), NewItem("c", {}, event_id=event_id)],
            )
        assert again.created and again.id != first.id
        assert (twin.id, twin.created) == (again.id, False)
        with sessions() as session:
            assert queue.get(session, again.id).event_type == "b"  # the first mention

    def test_a_holder_that_keeps_vanishing_gives_a_clear_error(
        self, sessions: sessionmaker[Session]
    ) -> None:
        queue = RetryQueue(clock=ManualClock(NOW))
        event_id = uuid.uuid4()
        with sessions.begin() as session:
            queue.enqueue(session, "a", {}, event_id=event_id)

        def purge() -> None:  # the holder goes just before every look-up...
            with sessions.begin() as other:
                held = other.execute(
                    text("SELECT id FROM daz_retry_queue WHERE event_id = :e"), {"e": event_id}
                ).scalars()
                queue.purge(other, list(held))

        def retake() -> None:  # ...and a new one comes just before every retry
            with sessions.begin() as other:
                queue.enqueue(other, "a", {}, event_id=event_id)

        inserts = [0]

        def hook(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().startswith("SELECT daz_retry_queue.id"):
                purge()
            elif statement.lstrip().startswith("INSERT INTO daz_retry_queue"):
                inserts[0] += 1
                if inserts[0] > 1:
                    retake()

        with sessions.begin() as session:
            event.listen(session.connection(), "before_cursor_execute", hook)
            with pytest.raises(EnqueueRaceError, match=str(event_id)):
                queue.enqueue(session, "a", {}, event_id=event_id)
        assert inserts[0] == 4  # the first INSERT and three retries


class TestIdCollision:
    """An id handed out twice (a sequence set back) is an error, not a silent skip.

    Plain table only: on the partitioned one the primary key is (id, created_at), so a
    repeated id collides only with a row created at the same instant (out of scope).
    """

    @pytest.mark.parametrize("table", ["plain"])
    def test_raises_naming_the_primary_key(
        self, pg_engine: Engine, sessions: sessionmaker[Session]
    ) -> None:
        queue = RetryQueue(clock=ManualClock(NOW))
        with sessions.begin() as session:
            made = queue.enqueue_many(session, [NewItem("a", {}) for _ in range(3)])
        with pg_engine.begin() as connection:
            connection.execute(
                text("SELECT setval('daz_retry_queue_id_seq', :i, false)"), {"i": made[0].id}
            )
        with pytest.raises(DatabaseError, match="daz_retry_queue_pkey"), sessions.begin() as s:
            queue.enqueue(s, "b", {})


class TestNaturalTiming:
    """A producer re-enqueues a few event_ids while another session purges them."""

    def test_only_results_or_documented_errors(self, sessions: sessionmaker[Session]) -> None:
        queue = RetryQueue(clock=ManualClock(NOW))
        event_ids = [uuid.uuid4() for _ in range(3)]
        done = threading.Event()
        errors: list[BaseException] = []

        def purge() -> None:
            try:
                while not done.is_set():
                    with sessions.begin() as session:
                        held = session.execute(
                            text("SELECT id FROM daz_retry_queue WHERE event_id = ANY(:e)"),
                            {"e": event_ids},
                        ).scalars()
                        queue.purge(session, list(held))
            except BaseException as exc:
                errors.append(exc)

        purger = threading.Thread(target=purge)
        purger.start()
        outcomes: list[str] = []
        try:
            for _ in range(100):
                try:
                    with sessions.begin() as session:
                        made = queue.enqueue_many(
                            session, [NewItem("a", {}, event_id=e) for e in event_ids]
                        )
                    outcomes.append("created" if any(m.created for m in made) else "existing")
                except EnqueueRaceError:
                    outcomes.append("race")
        finally:
            done.set()
            purger.join()
        assert errors == []
        assert len(outcomes) == 100 and "created" in outcomes
