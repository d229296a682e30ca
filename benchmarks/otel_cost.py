"""What tracing costs the drain (group ``otel``).

Three single-process drains of the same seeded items with the thread worker and a no-op
handler: ``plain`` (nothing from OpenTelemetry imported), ``otel-idle`` (the ``otel``
extra imported but not instrumented: the seam is one attribute read) and
``otel-noop-sdk`` (instrumented, on an OpenTelemetry SDK with no exporter and no metric
reader: spans and measurements are made, then dropped). Compare the items/s.

On a busy machine the drains' spread hides a few percent; :func:`attempt_cpu_cost` measures
the instrumentation's own CPU time per attempt (a span started, made current, ended with
its outcome, and the metric measurements), to set against the drain's time per item.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import URL

from benchmarks import scenarios
from benchmarks.harness import Figure, Signals
from retryqueue.queue import RetryQueue
from retryqueue.results import ClaimedItem

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


def attempt_cpu_cost(attempts: int = 20_000) -> Figure:
    """CPU microseconds the instrumentation adds to one successful attempt (no-op SDK)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    from retryqueue import hooks
    from retryqueue.otel import RetryQueueInstrumentor

    instrumentor = RetryQueueInstrumentor()
    instrumentor.instrument(tracer_provider=TracerProvider(), meter_provider=MeterProvider())
    hook = hooks.active
    assert hook is not None
    now = datetime.now(UTC)
    items = [
        ClaimedItem(
            n, uuid.uuid4(), "bench", None, None, {}, None, 0, 3, 60, 2.0, 5, None, (), now,
            now, "bench", now, uuid.uuid4(),
        )
        for n in range(attempts)
    ]  # fmt: skip
    began = time.process_time()
    for item in items:
        with hook.attempt(item):
            pass
        hook.outcome(item, "completed", None)
    seconds = time.process_time() - began
    instrumentor.uninstrument()
    return Figure(
        "otel", "attempt-cpu-cost", {"attempts": attempts}, seconds / attempts * 1e6, "us"
    )
