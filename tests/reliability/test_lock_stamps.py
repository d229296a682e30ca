"""A claim is stamped with the time it got its lock, not the time its transaction began.

A claim that waited behind another writer (SQLite's single write lock, a PostgreSQL
partition drop's ACCESS EXCLUSIVE lock, a MariaDB ``LOCK TABLES``) must not be born older
than that wait: else the next acquire reclaims it as stale while its holder works.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import ClaimedItem, ManualClock, RetryQueue, create_engine
from retryqueue.models import RetryItem
from tests.support.waiting import wait_until

DEADLINE = 15.0


def enqueue_one(sessions: sessionmaker[Session], queue: RetryQueue) -> int:
    with sessions.begin() as session:
        return queue.enqueue(session, "e", {}).id


class Claimer:
    """``queue.acquire`` in a thread of its own, on its own engine."""

    def __init__(self, engine: Engine, queue: RetryQueue) -> None:
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.queue = queue
        self.claimed: list[ClaimedItem] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with self.sessions.begin() as session:
                self.claimed = self.queue.acquire(session, "late", lock_timeout=60)
        except BaseException as exc:  # reported by join()
            self.error = exc

    def start(self) -> Claimer:
        self.thread.start()
        return self

    def join(self) -> list[ClaimedItem]:
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "the claim never got its lock"
        if self.error is not None:
            raise self.error
        return self.claimed


def stamps(sessions: sessionmaker[Session], item_id: int) -> tuple[datetime, datetime]:
    with sessions() as session:
        row = session.get_one(RetryItem, item_id)
        assert row.locked_at is not None and row.lock_expires_at is not None
        return row.locked_at, row.lock_expires_at


class TestSqlite:
    """SQLite: "now" is read once ``BEGIN IMMEDIATE`` holds the write lock."""

    @pytest.fixture
    def backend(self) -> str:
        return "sqlite"

    @pytest.fixture
    def traced(self, engine: Engine) -> Iterator[tuple[Engine, threading.Event]]:
        """A second engine on the database whose ``BEGIN IMMEDIATE`` sets an event as it
        starts running (SQLite's statement trace), i.e. once it waits for the lock."""
        beginning = threading.Event()
        other = create_engine(engine.url)

        @event.listens_for(other, "connect")
        def trace(dbapi_connection: Any, record: object) -> None:
            def seen(statement: str) -> None:
                if statement.startswith("BEGIN IMMEDIATE"):
                    beginning.set()

            dbapi_connection.set_trace_callback(seen)

        yield other, beginning
        other.dispose()

    def test_a_claim_that_waited_for_the_write_lock_is_stamped_when_it_got_it(
        self,
        engine: Engine,
        sessions: sessionmaker[Session],
        queue: RetryQueue,
        clock: ManualClock,
        traced: tuple[Engine, threading.Event],
    ) -> None:
        item_id = enqueue_one(sessions, queue)
        other, beginning = traced
        with engine.connect() as blocker:
            blocker.begin()  # BEGIN IMMEDIATE: this connection holds the write lock
            claimer = Claimer(other, queue).start()
            assert beginning.wait(DEADLINE), "the claim never began its transaction"
            got_lock_at = clock.advance(100)  # the claim waits 100 s (on the test's clock)
            blocker.commit()
        (claimed,) = claimer.join()
        assert claimed.id == item_id
        assert stamps(sessions, item_id) == (got_lock_at, got_lock_at + timedelta(seconds=60))


class TestPostgresql:
    """PostgreSQL: lock stamps are ``clock_timestamp()``, not the transaction's ``now()``."""

    @pytest.fixture
    def backend(self) -> str:
        return "postgresql"

    def test_a_claim_that_waited_behind_a_table_lock_is_stamped_after_it(
        self, engine: Engine, sessions: sessionmaker[Session]
    ) -> None:
        queue = RetryQueue()  # the database's clock
        item_id = enqueue_one(sessions, queue)
        with engine.connect() as blocker:
            blocker.execute(text("LOCK TABLE daz_retry_queue IN ACCESS EXCLUSIVE MODE"))
            claimer = Claimer(engine, queue).start()
            wait_until(
                lambda: waiting_for_a_lock(engine), what="the claim to wait for the table lock"
            )
            released_at = blocker.scalar(text("SELECT clock_timestamp()"))
            blocker.commit()
        (claimed,) = claimer.join()
        assert claimed.id == item_id
        locked_at, expires_at = stamps(sessions, item_id)
        assert locked_at > released_at  # not the transaction's start, before the wait
        assert timedelta(seconds=60) <= expires_at - locked_at < timedelta(seconds=61)


def waiting_for_a_lock(engine: Engine) -> bool:
    """Whether a backend of the test's database waits for a lock (read from a connection
    of its own: pg_stat_activity is a snapshot per transaction)."""
    with engine.connect() as observer:
        return bool(
            observer.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                )
            )
        )


class TestMysql:
    """MySQL/MariaDB: the claim's UPDATE runs after its locking read, so its statement
    time (``UTC_TIMESTAMP(6)``) is after any wait."""

    @pytest.fixture
    def backend(self) -> str:
        return "mysql"

    def test_a_claim_that_waited_behind_a_table_lock_is_stamped_after_it(
        self, engine: Engine, sessions: sessionmaker[Session]
    ) -> None:
        queue = RetryQueue()  # the database's clock
        item_id = enqueue_one(sessions, queue)
        with engine.connect() as blocker:
            blocker.execute(text("LOCK TABLES daz_retry_queue WRITE"))
            claimer = Claimer(engine, queue).start()
            wait_until(
                lambda: blocker.scalar(
                    text(
                        "SELECT count(*) FROM information_schema.processlist"
                        " WHERE state LIKE 'Waiting for table%' AND db = DATABASE()"
                    )
                ),
                what="the claim to wait for the table lock",
            )
            released_at = blocker.scalar(text("SELECT UTC_TIMESTAMP(6)"))
            blocker.execute(text("UNLOCK TABLES"))
            blocker.commit()
        (claimed,) = claimer.join()
        assert claimed.id == item_id
        locked_at, expires_at = stamps(sessions, item_id)
        assert locked_at.replace(tzinfo=None) >= released_at
        assert expires_at - locked_at == timedelta(seconds=60)


# -- natural timing --------------------------------------------------------------------------
#
# No hook into the library: threads enqueue and claim on the real clock (SystemClock on
# SQLite, the server's on PostgreSQL) while a blocker keeps taking the write lock (SQLite) or
# an ACCESS EXCLUSIVE table lock (PostgreSQL) for a while. Every transaction of the test
# writes a row of ``lock_order`` before it commits: holding the lock, so their ids are
# the order in which they got it. A claim made after a blocker released the lock must be
# stamped after the blocker's last clock reading — the code before the fix stamped a claim
# that had waited with the time it began to wait. No timing is asserted: only that order.

ROUNDS = 15
HOLD = 0.1  # how long each blocker transaction keeps the lock (simulated work, not a wait)


class NaturalRace:
    """Claimers, enqueuers and a blocker on one database until the blocker is done."""

    def __init__(self, engine: Engine, queue: RetryQueue) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.queue = queue
        self.postgres = engine.dialect.name == "postgresql"
        self.done = threading.Event()
        self.errors: list[BaseException] = []
        self.blocks: list[tuple[int, datetime]] = []  # (order, last clock reading)
        self.claims: list[tuple[int, datetime, datetime]] = []  # (order, began, locked_at)
        self.lock = threading.Lock()

    def order(self, connection: Any) -> tuple[int, datetime]:
        """Write this transaction's ``lock_order`` row; its id and the clock, read after."""
        if self.postgres:
            row = connection.execute(
                text("INSERT INTO lock_order DEFAULT VALUES RETURNING id, clock_timestamp()")
            ).one()
            return int(row[0]), row[1]
        order = connection.execute(text("INSERT INTO lock_order DEFAULT VALUES RETURNING id"))
        return int(order.scalar_one()), datetime.now(UTC)

    def guarded(self, body: Any) -> Any:
        def run() -> None:
            try:
                body()
            except BaseException as exc:  # reported by run()
                self.errors.append(exc)
                self.done.set()

        return threading.Thread(target=run, daemon=True)

    def block(self) -> None:
        for _ in range(ROUNDS):
            with self.engine.begin() as connection:
                if self.postgres:
                    connection.execute(text("LOCK TABLE daz_retry_queue IN ACCESS EXCLUSIVE MODE"))
                else:  # BEGIN IMMEDIATE holds the write lock; write as a real writer would
                    connection.execute(text("INSERT INTO lock_order DEFAULT VALUES"))
                time.sleep(HOLD)
                with self.lock:
                    self.blocks.append(self.order(connection))
            time.sleep(HOLD / 4)  # let the others run between blocks
        self.done.set()

    def claim(self, worker_id: str) -> None:
        while not self.done.is_set():
            began = datetime.now(UTC)
            with self.sessions.begin() as session:
                claimed = self.queue.acquire(session, worker_id, 2, lock_timeout=600)
                order, _ = self.order(session.connection())
            with self.lock:
                self.claims.extend((order, began, item.locked_at) for item in claimed)

    def enqueue(self) -> None:
        while not self.done.is_set():
            enqueue_one(self.sessions, self.queue)

    def run(self) -> None:
        with self.sessions.begin() as session:
            for _ in range(200):
                self.queue.enqueue(session, "e", {})
        threads = [self.guarded(self.block)]
        threads += [self.guarded(lambda n=n: self.claim(f"w{n}")) for n in range(3)]
        threads += [self.guarded(self.enqueue) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(DEADLINE * 4)
            assert not thread.is_alive(), "a thread of the race never finished"
        if self.errors:
            raise self.errors[0]

    def stale_claims(self) -> tuple[int, list[str]]:
        """How many claims waited behind a blocker, and those stamped before it released."""
        waited, stale = 0, []
        for order, began, locked_at in self.claims:
            before = [stamp for block, stamp in self.blocks if block < order]
            if not before:
                continue
            released = max(before)
            waited += began < released
            if locked_at < released:
                stale.append(f"claim #{order} stamped {locked_at}, lock released {released}")
        return waited, stale


@pytest.fixture
def lock_order(engine: Engine) -> Iterator[None]:
    """The table in which every transaction of the race writes its place in the lock order."""
    key = (
        "id BIGSERIAL PRIMARY KEY"
        if engine.dialect.name == "postgresql"
        else ("id INTEGER PRIMARY KEY AUTOINCREMENT")
    )
    with engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE lock_order ({key})"))
    yield
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE lock_order"))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.usefixtures("lock_order")
def test_claims_racing_a_lock_holder_are_stamped_after_it_released(
    engine: Engine, server_clock_queue: RetryQueue
) -> None:
    race = NaturalRace(engine, server_clock_queue)
    race.run()
    waited, stale = race.stale_claims()
    assert waited > 0, "no claim waited behind the blocker: the race did not happen"
    assert stale == []
