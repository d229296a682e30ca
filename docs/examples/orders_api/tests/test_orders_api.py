"""The order API end to end: HTTP request -> one transaction -> AsyncWorker -> e-mail.

Real parts: FastAPI over httpx's ASGI transport, aiosqlite, the async queue and worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

import retryqueue
from orders_api.app import CONFIRMATION, Base, Order, create_app, make_router
from retryqueue import AsyncRetryQueue, ManualClock, RetryItem, RetryStatus
from retryqueue.worker import RunReport
from retryqueue.worker.async_worker import AsyncWorker


class Mailer:
    """A mail service that fails the first ``failures`` sends."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.sent: list[tuple[str, str]] = []

    async def send(self, to: str, subject: str, body: str) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("mail service unavailable")
        self.sent.append((to, subject))


Scenario = Callable[
    [httpx.AsyncClient, async_sessionmaker[AsyncSession], AsyncRetryQueue], Awaitable[Any]
]


@pytest.fixture
def run(tmp_path: Path) -> Callable[[Scenario], Any]:
    """Run a scenario against the app on a fresh SQLite file (tables made up front)."""
    url = f"sqlite:///{tmp_path / 'orders.db'}"
    setup = create_sync_engine(url)
    retryqueue.metadata.create_all(setup)
    Base.metadata.create_all(setup)
    setup.dispose()

    def scenario(body: Scenario) -> Any:
        async def main() -> Any:
            engine = retryqueue.create_async_engine(url)
            sessions = async_sessionmaker(engine, expire_on_commit=False)
            queue = AsyncRetryQueue(clock=ManualClock())
            transport = httpx.ASGITransport(app=create_app(sessions, queue))
            try:
                async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                    return await body(client, sessions, queue)
            finally:
                await engine.dispose()

        return asyncio.run(main())

    return scenario


async def counts(sessions: async_sessionmaker[AsyncSession]) -> tuple[int, int]:
    async with sessions() as session:
        orders = await session.scalar(select(func.count()).select_from(Order))
        items = await session.scalar(select(func.count()).select_from(RetryItem))
        return int(orders or 0), int(items or 0)


class TestPlaceOrder:
    """The order and its confirmation are written together or not at all."""

    def test_order_and_confirmation_commit_together(self, run: Callable[[Scenario], Any]) -> None:
        async def body(client: httpx.AsyncClient, sessions: Any, queue: AsyncRetryQueue) -> None:
            reply = await client.post(
                "/orders", json={"reference": "A-1", "email": "ann@example.org", "total_cents": 990}
            )
            assert reply.status_code == 201, reply.text
            assert await counts(sessions) == (1, 1)
            async with sessions() as session:
                item = await queue.get(session, reply.json()["confirmation_item"])
                row = await session.get_one(RetryItem, item.id)
            assert (item.event_type, item.status) == (CONFIRMATION, RetryStatus.PENDING)
            assert row.event_data == {"order_id": reply.json()["id"], "email": "ann@example.org"}
            assert item.correlation_id == "order-A-1"

        run(body)

    def test_a_failed_order_leaves_no_confirmation_behind(
        self, run: Callable[[Scenario], Any]
    ) -> None:
        async def body(client: httpx.AsyncClient, sessions: Any, queue: AsyncRetryQueue) -> None:
            order = {"reference": "B-7", "email": "bob@example.org", "total_cents": 500}
            assert (await client.post("/orders", json=order)).status_code == 201
            again = await client.post("/orders", json=order)  # same reference: refused
            assert again.status_code == 409
            assert await counts(sessions) == (1, 1)  # the second enqueue was rolled back

        run(body)


class TestConfirmationWorker:
    """The AsyncWorker sends the e-mail with an async handler, retrying on failure."""

    def test_failed_send_is_retried_then_sent_once(self, run: Callable[[Scenario], Any]) -> None:
        async def body(client: httpx.AsyncClient, sessions: Any, queue: AsyncRetryQueue) -> None:
            order = {"reference": "C-3", "email": "cy@example.org", "total_cents": 120}
            order_id = (await client.post("/orders", json=order)).json()["id"]
            mailer = Mailer(failures=1)
            worker = AsyncWorker(queue, sessions, make_router(mailer), listen=False)
            assert await worker.run_once() == RunReport(acquired=1, retried=1)
            assert queue.clock is not None
            queue.clock.advance(60)  # the first retry's backoff
            assert await worker.run_once() == RunReport(acquired=1, completed=1)
            assert mailer.sent == [("cy@example.org", f"Order {order_id} confirmed")]
            assert await worker.run_once() == RunReport()  # nothing left to send

        run(body)
