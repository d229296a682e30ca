"""Record a real trace: an item enqueued in a request fails twice, then succeeds.

``python docs/observability/record_trace.py [SPANS_FILE]`` runs the OpenTelemetry SDK with
an exporter writing one JSON document per span (the SDK's own ``to_json``) to SPANS_FILE
(default: ``docs/observability/trace.jsonl``), on a throw-away SQLite database with a
thread worker. Render the file with ``trace_tree.py``.
"""

from __future__ import annotations

import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from retryqueue import ManualClock, RetryQueue
from retryqueue.models import metadata
from retryqueue.otel import RetryQueueInstrumentor
from retryqueue.worker import Job, Worker

HERE = Path(__file__).resolve().parent


def capture_payment(job: Job) -> None:
    """The handler: its own span nests under the attempt; the bank refuses twice."""
    tracer = trace.get_tracer("shop.payments")
    with tracer.start_as_current_span("POST https://bank.example/capture") as call:
        call.set_attribute("http.request.method", "POST")
        if job.attempt < 3:
            call.set_attribute("http.response.status_code", 503)
            raise ConnectionError("bank answered 503 Service Unavailable")
        call.set_attribute("http.response.status_code", 200)


def main(spans_file: Path) -> None:
    with spans_file.open("w", encoding="utf-8") as out, tempfile.TemporaryDirectory() as tmp:
        provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
        exporter = ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(None) + "\n")
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        RetryQueueInstrumentor().instrument(tracer_provider=provider)
        engine = create_engine(f"sqlite:///{tmp}/queue.db")
        metadata.create_all(engine)
        sessions = sessionmaker(engine)
        clock = ManualClock(datetime(2026, 1, 5, 9, 0, tzinfo=UTC))
        queue = RetryQueue(clock=clock)
        app = trace.get_tracer("shop.api")
        request = app.start_as_current_span("POST /orders", kind=trace.SpanKind.SERVER)
        with request, sessions.begin() as session:
            queue.enqueue(
                session,
                "payment.capture",
                {"order": 1017, "amount": "42.00"},
                plugin_name="bank",
                channel_name="eu",
                retry_delay_seconds=60,
            )
        worker = Worker(queue, sessions, {"payment.capture": capture_payment}, listen=False)
        for _ in range(3):
            worker.run_once()
            seconds = queue.seconds_until_claimable  # the backoff: 60 s, then 120 s
            with sessions() as session:
                wait = seconds(session)
            if wait is not None:
                clock.advance(max(wait, 0))
        RetryQueueInstrumentor().uninstrument()
        provider.shutdown()
        engine.dispose()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "trace.jsonl")
