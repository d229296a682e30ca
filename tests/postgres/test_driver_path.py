"""The steady flush on psycopg runs its compiled text on the session's DB-API connection.

What must hold: the text and parameters are exactly what SQLAlchemy would send; the items
come back the same either way; a driver error is a DatabaseError, as through SQLAlchemy,
and a dead connection is dropped; anyone watching SQLAlchemy (events) gets the ordinary path.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import NewItem, RetryQueue, RetryStatus, create_async_engine
from retryqueue import statements as sql
from retryqueue.aio import AsyncRetryQueue
from retryqueue.errors import DatabaseError
from retryqueue.models import RetryHistory, RetryItem
from retryqueue.results import ClaimedItem
from retryqueue.worker import Job, RunReport
from retryqueue.worker.async_worker import AsyncWorker

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])


@pytest.fixture
def driver_forms(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts the fast path sent (a spy around the real ``driver_form``)."""
    sent: list[str] = []
    real = sql.driver_form

    def spy(*args: Any) -> tuple[str, dict[str, Any]]:
        text, values = real(*args)
        sent.append(text)
        return text, values

    monkeypatch.setattr(sql, "driver_form", spy)
    return sent


@pytest.fixture
def watched(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Statements SQLAlchemy sends while a cursor event listens (the ordinary path)."""
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    yield seen
    event.remove(engine, "before_cursor_execute", capture)


def _seed(queue: RetryQueue, sessions: sessionmaker[Session], count: int) -> list[ClaimedItem]:
    with sessions.begin() as session:
        queue.enqueue_many(
            session,
            [
                NewItem("ok", {"n": n, "nested": [n, {"k": "v"}]}, tags=["a", "b"])
                for n in range(count)
            ],
        )
    with sessions.begin() as session:
        return queue.acquire(session, "w", batch_size=5)


async def _until_waiting_on_a_lock(engine: Engine, pids: list[int]) -> None:
    """Until the backend in ``pids`` waits for a row lock (polled, at most 30 s)."""
    for _ in range(3000):
        if pids:
            with engine.connect() as watcher:
                waiting = watcher.scalar(
                    text("select count(*) from pg_locks where pid = :pid and not granted"),
                    {"pid": pids[0]},
                )
            if waiting:
                return
        await asyncio.sleep(0.01)
    raise AssertionError("the flush never waited for the lock")


class TestDriverForm:
    """The compiled text and parameters are SQLAlchemy's own."""

    @pytest.mark.parametrize("at", [None, datetime(2026, 1, 5, 9, 0, tzinfo=UTC)])
    def test_text_and_parameters_match_what_sqlalchemy_sends(
        self, engine: Engine, watched: list[tuple[str, Any]], at: datetime | None
    ) -> None:
        leases = [(1, uuid.uuid4()), (2, uuid.uuid4())]
        stmt, params = sql.complete_record_and_claim(
            at, "w", leases, [3, None], uuid.uuid4(), 7, lock_timeout=30
        )
        with engine.connect() as connection:
            connection.execute(stmt, params).all()
            connection.rollback()
            text, values = sql.driver_form(stmt, connection.dialect, params)
        [(statement, parameters)] = watched
        assert text == statement
        assert values == parameters
        assert "LIMIT 7" in text  # the rendered LIMIT: one prepared text per batch size

    def test_each_batch_size_has_its_own_text(self, engine: Engine) -> None:
        texts = set()
        for size in (1, 10, 1, 10):
            stmt, params = sql.complete_record_and_claim(
                None, "w", [(1, uuid.uuid4())], [None], uuid.uuid4(), size, lock_timeout=30
            )
            texts.add(sql.driver_form(stmt, engine.dialect, params)[0])
        assert len(texts) == 2


class TestFastPath:
    """complete_and_acquire through the DB-API connection and through SQLAlchemy agree."""

    def test_unwatched_flush_takes_the_fast_path_and_builds_the_same_items(
        self,
        engine: Engine,
        sessions: sessionmaker[Session],
        driver_forms: list[str],
    ) -> None:
        queue = RetryQueue()
        held = _seed(queue, sessions, 20)
        with sessions.begin() as session:
            completed, fast = queue.complete_and_acquire(session, held, "w", 5, reclaim_stale=False)
        assert len(driver_forms) == 1  # the fast path ran
        assert completed == {item.id for item in held}
        with sessions.begin() as session:  # and again, watched: SQLAlchemy's own path
            seen: list[str] = []
            listener = lambda *args: seen.append(args[2])  # noqa: E731
            event.listen(engine, "before_cursor_execute", listener)
            try:
                completed, slow = queue.complete_and_acquire(
                    session, fast, "w", 5, reclaim_stale=False
                )
            finally:
                event.remove(engine, "before_cursor_execute", listener)
        assert len(driver_forms) == 1 and any(s.startswith("WITH done AS") for s in seen)
        assert completed == {item.id for item in fast}
        assert len(fast) == len(slow) == 5
        for one, other in zip(fast, slow, strict=True):
            for name in ClaimedItem.__dataclass_fields__:
                mine, theirs = getattr(one, name), getattr(other, name)
                assert type(mine) is type(theirs), name
                if isinstance(mine, datetime):
                    assert mine.tzinfo == UTC, name
            assert one.event_data["nested"][1]["k"] == "v"
            assert one.tags == ("a", "b")
        assert {item.event_data["n"] for item in fast} == set(range(5, 10))
        assert {item.event_data["n"] for item in slow} == set(range(10, 15))

    def test_a_lost_lease_is_refused_on_the_fast_path(
        self, sessions: sessionmaker[Session], driver_forms: list[str]
    ) -> None:
        queue = RetryQueue()
        held = _seed(queue, sessions, 5)
        with sessions.begin() as session:  # the operator requeues one: its lease is gone
            queue.release(session, "w", [held[0].id], lease_token=held[0].lease_token)
        with sessions.begin() as session:
            completed, _ = queue.complete_and_acquire(session, held, "w", 5, reclaim_stale=False)
        assert driver_forms
        assert completed == {item.id for item in held[1:]}

    def test_a_dead_connection_is_a_database_error_and_is_dropped(
        self, engine: Engine, sessions: sessionmaker[Session], driver_forms: list[str]
    ) -> None:
        queue = RetryQueue()
        held = _seed(queue, sessions, 10)
        with sessions() as session:
            connection = session.connection()
            pid = connection.exec_driver_sql("select pg_backend_pid()").scalar_one()
            with engine.connect() as other:
                other.exec_driver_sql(f"select pg_terminate_backend({int(pid)})")
            with pytest.raises(DatabaseError) as raised:
                queue.complete_and_acquire(session, held, "w", 5, reclaim_stale=False)
            assert connection.invalidated
            assert "complete" in str(raised.value)
        assert driver_forms
        with sessions.begin() as session:  # the pool hands out a live connection again
            completed, _ = queue.complete_and_acquire(session, held, "w", 5, reclaim_stale=False)
        assert completed == {item.id for item in held}


class TestAsyncFastPath:
    """Under asyncio (AsyncSession, run_sync) the flush takes the same path, on psycopg's
    async mode and on asyncpg, and stays inside the caller's transaction."""

    @pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
    def test_autocommitted_async_flush_takes_the_fast_path(
        self,
        engine: Engine,
        sessions: sessionmaker[Session],
        driver_forms: list[str],
        driver: str,
    ) -> None:
        queue = RetryQueue()
        held = _seed(queue, sessions, 10)

        async def flush() -> tuple[set[int], list[ClaimedItem]]:
            made = create_async_engine(engine.url.set(drivername=f"postgresql+{driver}"))
            try:
                autocommit = made.execution_options(isolation_level="AUTOCOMMIT")
                async with async_sessionmaker(autocommit)() as session:
                    return await AsyncRetryQueue.wrapping(queue).complete_and_acquire(
                        session, held, "w", 5, reclaim_stale=False
                    )
            finally:
                await made.dispose()

        completed, claimed = asyncio.run(flush())
        assert len(driver_forms) == 1
        assert completed == {item.id for item in held}
        assert {item.event_data["n"] for item in claimed} == set(range(5, 10))
        assert all(item.tags == ("a", "b") for item in claimed)

    @pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
    def test_a_dead_connection_is_a_database_error(
        self, engine: Engine, sessions: sessionmaker[Session], driver_forms: list[str], driver: str
    ) -> None:
        queue = RetryQueue()
        held = _seed(queue, sessions, 10)

        async def flush_on_a_killed_connection() -> None:
            made = create_async_engine(engine.url.set(drivername=f"postgresql+{driver}"))
            try:
                autocommit = made.execution_options(isolation_level="AUTOCOMMIT")
                async with async_sessionmaker(autocommit)() as session:
                    pid = (await session.execute(select(func.pg_backend_pid()))).scalar_one()
                    with engine.connect() as other:
                        other.exec_driver_sql(f"select pg_terminate_backend({int(pid)})")
                    with pytest.raises(DatabaseError):
                        await AsyncRetryQueue.wrapping(queue).complete_and_acquire(
                            session, held, "w", 5, reclaim_stale=False
                        )
                async with async_sessionmaker(autocommit)() as session:  # a live one again
                    completed, _ = await AsyncRetryQueue.wrapping(queue).complete_and_acquire(
                        session, held, "w", 5, reclaim_stale=False
                    )
                    assert completed == {item.id for item in held}
            finally:
                await made.dispose()

        asyncio.run(flush_on_a_killed_connection())
        assert len(driver_forms) == 2

    @pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
    def test_a_flush_cancelled_mid_statement_drops_its_connection(
        self, engine: Engine, sessions: sessionmaker[Session], driver_forms: list[str], driver: str
    ) -> None:
        """A task cancelled while its flush waits at the server (here on a row lock) must
        not hand its connection, mid-statement, to the next user of the pool."""
        queue = RetryQueue()
        held = _seed(queue, sessions, 10)

        async def cancel_then_flush_again() -> set[int]:
            made = create_async_engine(
                engine.url.set(drivername=f"postgresql+{driver}"), pool_size=1, max_overflow=0
            )
            autocommit = made.execution_options(isolation_level="AUTOCOMMIT")
            front = AsyncRetryQueue.wrapping(queue)
            try:
                with engine.connect() as blocker:  # holds one held item's row lock
                    blocker.execute(
                        select(RetryItem.id).where(RetryItem.id == held[0].id).with_for_update()
                    )
                    pids: list[int] = []

                    async def flush() -> None:
                        async with async_sessionmaker(autocommit)() as session:
                            pid = await session.scalar(select(func.pg_backend_pid()))
                            pids.append(int(pid or 0))
                            await front.complete_and_acquire(
                                session, held, "w", 5, reclaim_stale=False
                            )

                    task = asyncio.create_task(flush())
                    await _until_waiting_on_a_lock(engine, pids)
                    task.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await task
                    blocker.rollback()
                async with async_sessionmaker(autocommit)() as session:  # the pool's only slot
                    completed, _ = await front.complete_and_acquire(
                        session, held, "w", 5, reclaim_stale=False
                    )
                    return completed
            finally:
                await made.dispose()

        assert asyncio.run(cancel_then_flush_again()) == {item.id for item in held}
        assert len(driver_forms) == 2

    @pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
    def test_the_flush_is_part_of_the_callers_transaction(
        self, engine: Engine, sessions: sessionmaker[Session], driver: str
    ) -> None:
        queue = RetryQueue()
        held = _seed(queue, sessions, 10)

        async def flush_then_roll_back() -> list[ClaimedItem]:
            made = create_async_engine(engine.url.set(drivername=f"postgresql+{driver}"))
            try:
                async with async_sessionmaker(made)() as session:
                    await session.begin()
                    _, claimed = await AsyncRetryQueue.wrapping(queue).complete_and_acquire(
                        session, held, "w", 5, reclaim_stale=False
                    )
                    await session.rollback()
                    return claimed
            finally:
                await made.dispose()

        assert len(asyncio.run(flush_then_roll_back())) == 5
        with sessions() as session:  # rolled back: nothing completed, nothing claimed
            statuses = session.execute(
                select(RetryItem.status, func.count()).group_by(RetryItem.status)
            ).all()
            assert dict(statuses) == {RetryStatus.PROCESSING: 5, RetryStatus.PENDING: 5}
            assert session.scalar(select(func.count()).select_from(RetryHistory)) == 0


class TestAsyncpgWorker:
    """The asyncio worker on asyncpg drains through the fast path, each item once."""

    def test_drain_on_asyncpg_completes_every_item_once(
        self, engine: Engine, sessions: sessionmaker[Session], driver_forms: list[str]
    ) -> None:
        queue, total = RetryQueue(), 60
        with sessions.begin() as session:
            queue.enqueue_many(session, [NewItem("ok", {"n": n}) for n in range(total)])
        ran: list[int] = []

        async def drain() -> RunReport:
            made = create_async_engine(engine.url.set(drivername="postgresql+asyncpg"))
            done = asyncio.Event()

            async def handler(job: Job) -> None:
                ran.append(job.event_data["n"])
                if len(ran) == total:
                    done.set()

            worker = AsyncWorker(
                queue, async_sessionmaker(made), {"ok": handler}, batch_size=5, listen=False
            )
            try:
                running = asyncio.create_task(worker.run())
                await asyncio.wait_for(done.wait(), 60)
                worker.stop()
                return await asyncio.wait_for(running, 60)
            finally:
                await made.dispose()

        report = asyncio.run(drain())
        assert sorted(ran) == list(range(total))
        assert report.completed == total
        assert driver_forms  # the steady flushes went the driver's way
        with sessions() as session:
            history = session.execute(
                select(RetryHistory.retry_queue_id, func.count())
                .where(RetryHistory.status == "completed")
                .group_by(RetryHistory.retry_queue_id)
            ).all()
            left = session.scalar(
                select(func.count()).where(RetryItem.status != RetryStatus.COMPLETED)
            )
        assert len(history) == total and all(count == 1 for _, count in history)
        assert left == 0


class TestSchemaTranslation:
    """A schema_translate_map rewrites SQL at execution: only SQLAlchemy may run it."""

    def test_a_translated_engine_keeps_sqlalchemys_path(
        self, engine: Engine, driver_forms: list[str]
    ) -> None:
        translated = engine.execution_options(schema_translate_map={None: "public"})
        sessions = sessionmaker(translated, expire_on_commit=False)
        queue = RetryQueue()
        held = _seed(queue, sessions, 10)
        with sessions.begin() as session:
            completed, claimed = queue.complete_and_acquire(
                session, held, "w", 5, reclaim_stale=False
            )
        assert driver_forms == []
        assert completed == {item.id for item in held} and len(claimed) == 5
