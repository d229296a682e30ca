"""Cancelling the task that runs ``AsyncWorker.run()`` is a graceful stop (asyncio only)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import AsyncRetryQueue, RetryQueue, RetryStatus, create_async_engine
from retryqueue.worker import Job
from retryqueue.worker.async_worker import AsyncWorker
from tests.support.async_worker import async_url
from tests.worker.conftest import enqueue, history, statuses

DEADLINE = 30.0


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Await ``condition`` (checked every 20 ms) for at most DEADLINE seconds."""
    try:
        async with asyncio.timeout(DEADLINE):
            while not await condition():
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out after {DEADLINE:.0f}s waiting for {what}")


def pending_is(
    sessions: async_sessionmaker[AsyncSession], queue: AsyncRetryQueue, expected: int
) -> Callable[[], Awaitable[bool]]:
    """A condition: exactly ``expected`` items are pending."""

    async def check() -> bool:
        async with sessions() as session:
            rows = await queue.stats(session)
        return sum(row.count for row in rows if row.status is RetryStatus.PENDING) == expected

    return check


class TestCancellation:
    """A first cancel stops acquiring, releases unstarted items and lets the running
    handler finish; a second cancel abandons it."""

    def test_first_cancel_drains_gracefully_then_reraises(
        self, engine: Engine, sessions: sessionmaker[Session], server_clock_queue: RetryQueue
    ) -> None:
        ids = enqueue(sessions, server_clock_queue, "slow.job", 4)

        async def scenario() -> None:
            made = create_async_engine(async_url(engine))
            maker = async_sessionmaker(made, expire_on_commit=False)
            queue = AsyncRetryQueue.wrapping(server_clock_queue)
            started, release = asyncio.Event(), asyncio.Event()

            async def slow(job: Job) -> None:
                started.set()
                await release.wait()

            worker = AsyncWorker(
                queue, maker, {"slow.job": slow}, batch_size=4, listen=False, shutdown_grace=30
            )
            running = asyncio.create_task(worker.run())
            try:
                await asyncio.wait_for(started.wait(), DEADLINE)
                running.cancel()
                await until(pending_is(maker, queue, 3), "the unstarted items released")
                assert not running.done()  # still waiting for the running handler
                release.set()
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(running, DEADLINE)
                assert worker.stopping
            finally:
                release.set()
                await made.dispose()

        asyncio.run(scenario())
        found = statuses(sessions)
        assert sorted(found.values()).count(RetryStatus.COMPLETED) == 1
        assert sorted(found.values()).count(RetryStatus.PENDING) == 3
        (done,) = [item_id for item_id in ids if found[item_id] is RetryStatus.COMPLETED]
        assert [status for status, _, _ in history(sessions, done)] == ["completed"]

    def test_second_cancel_abandons_the_running_handler(
        self, engine: Engine, sessions: sessionmaker[Session], server_clock_queue: RetryQueue
    ) -> None:
        (item_id,) = enqueue(sessions, server_clock_queue, "stuck.job", 1)

        async def scenario() -> None:
            made = create_async_engine(async_url(engine))
            maker = async_sessionmaker(made, expire_on_commit=False)
            started, never = asyncio.Event(), asyncio.Event()

            async def stuck(job: Job) -> None:
                started.set()
                await never.wait()

            worker = AsyncWorker(
                server_clock_queue, maker, {"stuck.job": stuck}, listen=False, shutdown_grace=600
            )
            running = asyncio.create_task(worker.run())
            try:
                await asyncio.wait_for(started.wait(), DEADLINE)
                running.cancel()

                async def stopping() -> bool:
                    return worker.stopping

                await until(stopping, "the first cancel turned into stop()")
                running.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await asyncio.wait_for(running, DEADLINE)
            finally:
                await made.dispose()

        asyncio.run(scenario())
        # Abandoned: still processing under its lease; another worker reclaims it later.
        assert statuses(sessions)[item_id] is RetryStatus.PROCESSING
