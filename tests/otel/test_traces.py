"""Traces: one story from the enqueuing request through every attempt, with both workers,
the testing kit's drain, and a replay."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import RetryQueue
from retryqueue.models import RetryItem
from retryqueue.otel import TRACE_KEY
from retryqueue.testing import drain
from retryqueue.worker import Job
from tests.otel.conftest import Telemetry
from tests.worker.conftest import new_worker, worker_kind  # noqa: F401  (fixture)

EVENT = "orders.sync"


class FlakyHandler:
    """Fails ``failures`` times, then succeeds; notes the span current in each run."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.seen: list[trace.SpanContext] = []

    def __call__(self, job: Job) -> None:
        self.seen.append(trace.get_current_span().get_span_context())
        if len(self.seen) <= self.failures:
            raise ConnectionError(f"upstream refused attempt {job.attempt}")


def enqueue_in_request(
    telemetry: Telemetry, sessions: sessionmaker[Session], queue: RetryQueue, **fields: Any
) -> tuple[int, ReadableSpan]:
    """Enqueue one item inside a request span; the item id and the request span."""
    tracer = telemetry.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("POST /orders"), sessions.begin() as session:
        item_id = queue.enqueue(
            session,
            EVENT,
            {"order": 7},
            plugin_name="shop",
            channel_name="eu",
            retry_delay_seconds=0,
            **fields,
        ).id
    (request,) = [s for s in telemetry.finished() if s.name == "POST /orders"]
    return item_id, request


def stored_metadata(sessions: sessionmaker[Session], item_id: int) -> dict[str, Any]:
    """The item's event_metadata as stored."""
    with sessions() as session:
        stored = session.get_one(RetryItem, item_id).event_metadata
    assert stored is not None
    return stored


def check_story(telemetry: Telemetry, request: ReadableSpan, item_id: int, handler: Any) -> None:
    """One PRODUCER span under the request; attempt 1 its child; later ones linked."""
    (producer,) = telemetry.finished(SpanKind.PRODUCER)
    consumers = sorted(
        telemetry.finished(SpanKind.CONSUMER), key=lambda s: s.attributes["retryqueue.attempt"]
    )
    assert producer.name == f"retryqueue enqueue {EVENT}"
    assert producer.parent is not None and producer.parent.span_id == request.context.span_id
    assert producer.attributes["messaging.system"] == "retryqueue"
    assert producer.attributes["messaging.operation.type"] == "send"
    assert producer.attributes["messaging.destination.name"] == EVENT
    assert [s.name for s in consumers] == [f"retryqueue process {EVENT}"] * 3
    first, second, third = consumers
    assert first.parent is not None and first.parent.span_id == producer.context.span_id
    assert first.context.trace_id == request.context.trace_id
    assert not first.links
    for later, before in ((second, first), (third, second)):
        assert later.parent is None
        assert later.context.trace_id not in (request.context.trace_id, before.context.trace_id)
        linked = {link.context.span_id: link.attributes["retryqueue.link"] for link in later.links}
        assert linked == {
            producer.context.span_id: "enqueue",
            before.context.span_id: "previous_attempt",
        }
    expected = [("retry_scheduled", 1), ("retry_scheduled", 2), ("completed", 3)]
    assert [
        (s.attributes["retryqueue.outcome"], s.attributes["retryqueue.attempt"]) for s in consumers
    ] == expected
    for span in consumers:
        assert span.attributes["retryqueue.item.id"] == item_id
        assert span.attributes["retryqueue.plugin"] == "shop"
        assert span.attributes["retryqueue.channel"] == "eu"
        assert span.attributes["retryqueue.max_retries"] == 3
        assert (
            span.attributes["messaging.message.id"] == producer.attributes["messaging.message.id"]
        )
        assert span.attributes["messaging.operation.type"] == "process"
    for failed in (first, second):
        assert failed.attributes["retryqueue.backoff_seconds"] == 0.0
        assert failed.status.status_code is StatusCode.ERROR
        (event,) = failed.events
        assert event.name == "exception"
        assert event.attributes["exception.type"] == "ConnectionError"
        assert "upstream refused" in str(event.attributes["exception.message"])
    assert "retryqueue.backoff_seconds" not in third.attributes
    assert third.status.status_code is StatusCode.UNSET
    # The handler saw each attempt's span as the current one.
    assert [c.span_id for c in handler.seen] == [s.context.span_id for s in consumers]


class TestFailTwiceThenSucceed:
    """An item that fails twice then succeeds: one PRODUCER span and three CONSUMER spans."""

    pytestmark = pytest.mark.usefixtures("worker_kind")

    def test_worker(
        self, telemetry: Telemetry, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        item_id, request = enqueue_in_request(telemetry, sessions, queue)
        handler = FlakyHandler(failures=2)
        worker = new_worker(queue, sessions, {EVENT: handler}, listen=False)
        reports = [worker.run_once() for _ in range(3)]
        assert [r.completed for r in reports] == [0, 0, 1]
        check_story(telemetry, request, item_id, handler)

    def test_drain(
        self, telemetry: Telemetry, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        item_id, request = enqueue_in_request(telemetry, sessions, queue)
        handler = FlakyHandler(failures=2)
        with sessions.begin() as session:
            report = drain(queue, session, {EVENT: handler})
        assert report.items[item_id].attempts == 3
        check_story(telemetry, request, item_id, handler)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_async_def_handler_sees_its_span(
    telemetry: Telemetry, sessions: sessionmaker[Session], queue: RetryQueue
) -> None:
    """An ``async def`` handler on the event loop runs inside its attempt's span."""
    from tests.support.async_worker import BlockingAsyncWorker

    seen: list[trace.SpanContext] = []

    async def handler(job: Job) -> None:
        seen.append(trace.get_current_span().get_span_context())

    enqueue_in_request(telemetry, sessions, queue)
    BlockingAsyncWorker(queue, sessions, {EVENT: handler}, listen=False).run_once()
    (consumer,) = telemetry.finished(SpanKind.CONSUMER)
    assert [c.span_id for c in seen] == [consumer.context.span_id]
    assert consumer.attributes["retryqueue.outcome"] == "completed"


class TestEndings:
    """How an item's last span says the item ended."""

    def test_dead_lettered_item_last_span_says_so(
        self, telemetry: Telemetry, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        item_id, _ = enqueue_in_request(telemetry, sessions, queue, max_retries=1)
        with sessions.begin() as session:
            drain(queue, session, {EVENT: FlakyHandler(failures=99)})
        spans = telemetry.finished(SpanKind.CONSUMER)
        assert [s.attributes["retryqueue.outcome"] for s in spans] == [
            "retry_scheduled",
            "dead_lettered",
        ]
        last = spans[-1]
        assert last.status.status_code is StatusCode.ERROR
        assert last.status.description is not None and "ConnectionError" in last.status.description
        stored = stored_metadata(sessions, item_id)
        assert set(stored[TRACE_KEY]) == {"enqueue", "attempt"}
        assert f"{last.context.span_id:016x}" in stored[TRACE_KEY]["attempt"]["traceparent"]

    def test_replay_links_new_attempts_to_the_operator_action(
        self, telemetry: Telemetry, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        item_id, _ = enqueue_in_request(telemetry, sessions, queue, max_retries=0)
        with sessions.begin() as session:
            drain(queue, session, {EVENT: FlakyHandler(failures=1)})
        (dead,) = telemetry.finished(SpanKind.CONSUMER)
        with sessions.begin() as session:
            assert queue.requeue(session, [item_id], requested_by="ops@example") == [item_id]
        (replay,) = [s for s in telemetry.finished() if s.name == "retryqueue replay"]
        assert replay.attributes["retryqueue.requested_by"] == "ops@example"
        with sessions.begin() as session:
            drain(queue, session, {EVENT: lambda job: None})
        again = telemetry.finished(SpanKind.CONSUMER)[-1]
        assert again.attributes["retryqueue.attempt"] == 1
        assert again.attributes["retryqueue.outcome"] == "completed"
        assert again.parent is None
        (producer,) = telemetry.finished(SpanKind.PRODUCER)[:1]
        linked = {link.attributes["retryqueue.link"]: link.context.span_id for link in again.links}
        assert linked == {
            "enqueue": producer.context.span_id,
            "previous_attempt": dead.context.span_id,
            "replay": replay.context.span_id,
        }

    def test_user_metadata_is_kept(
        self, telemetry: Telemetry, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        item_id, _ = enqueue_in_request(
            telemetry, sessions, queue, event_metadata={"source": "api"}
        )
        with sessions.begin() as session:
            drain(queue, session, {EVENT: FlakyHandler(failures=1)})
        stored = stored_metadata(sessions, item_id)
        assert stored["source"] == "api"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_async_enqueue_is_a_child_of_the_request(
    telemetry: Telemetry, sessions: sessionmaker[Session]
) -> None:
    """AsyncRetryQueue runs enqueue through run_sync: the request's span is still the parent."""
    import asyncio

    from sqlalchemy.ext.asyncio import async_sessionmaker

    from retryqueue import AsyncRetryQueue, create_async_engine
    from tests.support.async_worker import async_url

    async def enqueue() -> None:
        engine = create_async_engine(async_url(sessions.kw["bind"]))
        tracer = telemetry.tracer_provider.get_tracer("app")
        try:
            with tracer.start_as_current_span("POST /orders"):
                async with async_sessionmaker(engine).begin() as session:
                    await AsyncRetryQueue().enqueue(session, EVENT, {"order": 1})
        finally:
            await engine.dispose()

    asyncio.run(enqueue())
    (producer,) = telemetry.finished(SpanKind.PRODUCER)
    (request,) = [s for s in telemetry.finished() if s.name == "POST /orders"]
    assert producer.parent is not None and producer.parent.span_id == request.context.span_id
