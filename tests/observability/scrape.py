"""``python -m tests.observability.scrape``: print a real scrape of the queue exporter and of
a worker's metrics, after some work on a throw-away SQLite database (for ``promtool check
metrics`` in ``.ci/run``)."""

from __future__ import annotations

import tempfile
import urllib.request
from pathlib import Path

from prometheus_client import CollectorRegistry
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from retryqueue import CircuitBreaker, RetryQueue
from retryqueue.metrics import QueueCollector, WorkerMetrics, serve
from retryqueue.models import metadata
from retryqueue.worker import Job, PermanentError, Worker


def fail(job: Job) -> None:
    """Fail the item for good."""
    raise PermanentError("rejected")


def fetch(registry: CollectorRegistry) -> str:
    """One scrape of ``registry`` over HTTP."""
    server = serve(registry, port=0)
    try:
        with urllib.request.urlopen(server.url, timeout=30) as response:
            return str(response.read().decode())
    finally:
        server.stop()


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        engine = create_engine(f"sqlite:///{Path(folder) / 'queue.db'}")
        metadata.create_all(engine)
        sessions, queue, worker_metrics = sessionmaker(engine), RetryQueue(), WorkerMetrics()
        with sessions.begin() as session:
            queue.enqueue(session, "order.pay", {"order": 1}, plugin_name="bank")
            queue.enqueue(session, "order.ok", {"order": 2})
            CircuitBreaker().open(session, "mail", reason="maintenance")
        handlers = {"order.pay": fail, "order.ok": lambda job: None}
        Worker(queue, sessions, handlers, listen=False, observers=[worker_metrics]).run_once()
        exporter = CollectorRegistry()
        exporter.register(QueueCollector(engine, queue))
        print(fetch(exporter) + fetch(worker_metrics.registry), end="")
        engine.dispose()


if __name__ == "__main__":
    main()
