"""A worker in a process of its own, exporting its spans as JSON lines to a file.

``python -m tests.otel.worker_process DATABASE_URL SPANS_FILE``: runs rounds until one
completes an item, then flushes the spans and exits.
"""

from __future__ import annotations

import sys

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from retryqueue import RetryQueue
from retryqueue.otel import RetryQueueInstrumentor
from retryqueue.worker import Job, Worker


def handler(job: Job) -> None:
    """Fails the first attempt, then succeeds."""
    if job.attempt == 1:
        raise ConnectionError("first attempt refused")


def main(url: str, spans_file: str) -> None:
    with open(spans_file, "w", encoding="utf-8") as out:
        provider = TracerProvider()
        exporter = ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(None) + "\n")
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        RetryQueueInstrumentor().instrument(tracer_provider=provider)
        engine = create_engine(url)
        worker = Worker(RetryQueue(), sessionmaker(engine), {"orders.sync": handler}, listen=False)
        for _ in range(10):
            if worker.run_once().completed:
                break
        provider.shutdown()
        engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
