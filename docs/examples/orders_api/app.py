"""An order API (FastAPI, async SQLAlchemy) that queues its confirmation e-mails.

``POST /orders`` stores the order and enqueues an ``order.confirmation`` item **in the same
transaction**: the e-mail is queued if and only if the order is stored. A failure after
the enqueue (here: a duplicate order reference) rolls both back, so no e-mail is ever sent
for an order that does not exist, and none is lost for one that does.

An :class:`~retryqueue.worker.async_worker.AsyncWorker` runs :func:`make_router`'s handler,
an ``async def`` that calls the mail service; when the service fails, the item is retried
with backoff. Run it beside the API (same process or not)::

    worker = AsyncWorker(queue, sessions, make_router(mailer), concurrency=10)
    task = asyncio.create_task(worker.run())   # cancel it to shut down gracefully
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import DateTime, String, func
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from retryqueue import AsyncRetryQueue
from retryqueue.worker import Job
from retryqueue.worker.routing import Router

CONFIRMATION = "order.confirmation"


class Base(DeclarativeBase):
    """The application's own models (retryqueue's tables live in ``retryqueue.metadata``)."""


class Order(Base):
    """An order; ``reference`` is the client's idempotency key."""

    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    reference: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(255))
    total_cents: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class OrderIn(BaseModel):
    """The request body of ``POST /orders``."""

    reference: str = Field(min_length=1, max_length=64)
    email: str = Field(min_length=3, max_length=255)
    total_cents: int = Field(gt=0)


class OrderOut(BaseModel):
    """The response: the stored order's id and its queued confirmation."""

    id: int
    reference: str
    confirmation_item: int


def create_app(sessions: async_sessionmaker[AsyncSession], queue: AsyncRetryQueue) -> FastAPI:
    """The API, on the application's async sessionmaker and the queue's async front."""
    app = FastAPI(title="orders")

    @app.post("/orders", status_code=201)
    async def place_order(order: OrderIn) -> OrderOut:
        try:
            async with sessions.begin() as session:  # one transaction: order + e-mail
                row = Order(**order.model_dump())
                session.add(row)
                await session.flush()  # the order's id, for the e-mail's payload
                queued = await queue.enqueue(
                    session,
                    CONFIRMATION,
                    {"order_id": row.id, "email": order.email},
                    plugin_name="mailer",
                    correlation_id=f"order-{order.reference}",
                    max_retries=5,
                )
        except IntegrityError:
            raise HTTPException(409, f"order {order.reference!r} exists") from None
        return OrderOut(id=row.id, reference=row.reference, confirmation_item=queued.id)

    return app


class Mailer(Protocol):
    """The mail service (an HTTP API in a real application)."""

    async def send(self, to: str, subject: str, body: str) -> None: ...


def make_router(mailer: Mailer) -> Router:
    """The worker's handlers: an ``async def`` runs on the worker's event loop."""
    router = Router()

    @router.route(CONFIRMATION)
    async def send_confirmation(job: Job) -> None:
        data: dict[str, Any] = dict(job.event_data)
        await mailer.send(
            data["email"], f"Order {data['order_id']} confirmed", "Thank you for your order."
        )

    return router
