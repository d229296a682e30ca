"""What tracing costs the drain (group ``otel``).

Three single-process drains of the same seeded items with the thread worker and a no-op
handler: ``plain`` (nothing from OpenTelemetry imported), ``otel-idle`` (the ``otel``
extra imported but not instrumented: the seam is one attribute read) and
``otel-noop-sdk`` (instrumented, on an OpenTelemetry SDK with no exporter and no metric
reader: spans and measurements are made, then dropped). Compare the items/s.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import URL

from benchmarks import scenarios
from benchmarks.harness import Signals
from retryqueue.queue import RetryQueue

MODES = ("plain", "otel-idle", "otel-noop-sdk")


def _instrument(mode: str) -> None:
    if mode == "plain":
        return
    from retryqueue.otel import RetryQueueInstrumentor  # imported late: only this mode

    if mode == "otel-noop-sdk":
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider

        RetryQueueInstrumentor().instrument(
            tracer_provider=TracerProvider(), meter_provider=MeterProvider()
        )


def consume(signals: Signals, url: URL, batch_size: int, mode: str) -> None:
    """A worker process draining with tracing as ``mode`` says, until told to stop."""
    _instrument(mode)
    engine, worker = scenarios._make_worker(url, batch_size, _noop, RetryQueue())
    try:
        signals.ready.set()
        signals.start.wait()
        scenarios._run_until_stopped(worker, signals)
    finally:
        engine.dispose()


def _noop(job: Any) -> None:
    """The no-op handler."""
