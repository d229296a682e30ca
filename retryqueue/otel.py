"""OpenTelemetry tracing and metrics for retryqueue (the ``otel`` extra; API only).

``RetryQueueInstrumentor().instrument()`` (or ``opentelemetry-instrument``, through the
``opentelemetry_instrumentor`` entry point) fills the library's instrumentation seam
(:mod:`retryqueue.hooks`); ``uninstrument()`` empties it. The application chooses the SDK
and exporters. What is traced:

* **enqueue**: one PRODUCER span ``retryqueue enqueue <event_type>`` per item; its W3C
  context (``traceparent``/``tracestate``) is stored in the item's ``event_metadata``
  under the reserved key :data:`TRACE_KEY` (``{"enqueue": {...}}``), so the reference
  schema needs no new column;
* **each attempt**: one CONSUMER span ``retryqueue process <event_type>``, current while
  the handler runs (its own instrumentation nests under it) and ended when the outcome is
  recorded. The first attempt is a child of the enqueue span; a later attempt (a retry, a
  reclaimed lease, a replay) starts a new trace *linked* to the enqueue span, to the
  previous attempt (stored under ``{"attempt": {...}}`` with the failure) and to the
  operator's replay (``{"replay": {...}}``);
* **replay** (:meth:`~retryqueue.queue.RetryQueue.requeue`): a PRODUCER span
  ``retryqueue replay``.

Metrics (OTel metrics API, the same meanings as the Prometheus figures of
:mod:`retryqueue.metrics`): ``retryqueue.worker.attempts`` (counter by event type,
plugin and outcome), ``retryqueue.worker.handler.duration`` (histogram, s),
``retryqueue.worker.claim.latency`` (histogram, s: from an item's due time to its claim)
and, with ``instrument(engine=...)``, ``retryqueue.items`` (observable gauge per status,
read from the database at each collection) and ``retryqueue.limits.throttled_claims``
(observable counter per rate-limited key, attribute ``retryqueue.limit_key``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.instrumentor import (
    BaseInstrumentor,
)
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from retryqueue import hooks, monitoring
from retryqueue.errors import RetryQueueError
from retryqueue.models import RetryStatus
from retryqueue.queue import RetryQueue
from retryqueue.results import ClaimedItem

__all__ = ["TRACE_KEY", "RetryQueueInstrumentor"]

__version__ = "0.1.0"

TRACE_KEY = "retryqueue.trace"
"""The reserved ``event_metadata`` key holding an item's W3C trace contexts."""

logger = logging.getLogger("retryqueue.otel")

_SYSTEM = "retryqueue"
_W3C = TraceContextTextMapPropagator()  # always W3C, whatever the global propagator is
_MAX_OPEN = 10_000  # spans of attempts whose outcome was never recorded are ended past this
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class RetryQueueInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Traces and measures retryqueue; see the module docstring.

    ``instrument(tracer_provider=..., meter_provider=..., engine=...)``: the providers
    default to the global ones; ``engine`` (optional) enables the queue-depth gauges.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        """No third-party package is patched: retryqueue calls its own seam."""
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        hooks.install(
            _Telemetry(
                trace.get_tracer(__name__, __version__, kwargs.get("tracer_provider")),
                metrics.get_meter(__name__, __version__, kwargs.get("meter_provider")),
                kwargs.get("engine"),
            )
        )

    def _uninstrument(self, **kwargs: Any) -> None:
        active = hooks.active
        if isinstance(active, _Telemetry):
            active.close()
        hooks.uninstall()


def _carrier(span: Span) -> dict[str, str]:
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def _span_context(carrier: object) -> SpanContext | None:
    if not isinstance(carrier, Mapping):
        return None
    extracted = trace.get_current_span(_W3C.extract(dict(carrier))).get_span_context()
    return extracted if extracted.is_valid else None


def _stored(item: ClaimedItem) -> Mapping[str, Any]:
    stored = (item.event_metadata or {}).get(TRACE_KEY)
    return stored if isinstance(stored, Mapping) else {}


def _labels(item: ClaimedItem, **more: str) -> dict[str, str]:
    return {"event_type": item.event_type, "plugin": item.plugin_name or "", **more}


class _Telemetry:
    """The :class:`retryqueue.hooks.Instrumentation` that OpenTelemetry fills."""

    def __init__(self, tracer: trace.Tracer, meter: metrics.Meter, engine: Engine | None) -> None:
        self.tracer = tracer
        self.engine = engine
        self._open: dict[tuple[int, Any], tuple[Span, float, bool]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.attempts = meter.create_counter(
            "retryqueue.worker.attempts", "{attempt}", "Handler attempts by outcome."
        )
        self.duration = meter.create_histogram(
            "retryqueue.worker.handler.duration",
            "s",
            "Handler run time.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self.claim_latency = meter.create_histogram(
            "retryqueue.worker.claim.latency",
            "s",
            "Time from an item's due time to its claim by a worker.",
        )
        if engine is not None:
            meter.create_observable_gauge(
                "retryqueue.items",
                [self._observe_depth],
                "{item}",
                "Queue items per status, read from the database.",
            )
            meter.create_observable_counter(
                "retryqueue.limits.throttled_claims",
                [self._observe_throttled],
                "{claim}",
                "Claims that left a rate-limited key's due items pending, per key (database).",
            )

    def close(self) -> None:
        """Stop observing the database (the OTel API cannot unregister a callback)."""
        self._closed = True

    # -- enqueue ---------------------------------------------------------------------------

    @contextmanager
    def enqueue(self, rows: list[dict[str, Any]]) -> Iterator[None]:
        """PRODUCER spans around the INSERT; their contexts go into each row's metadata."""
        spans = []
        for row in rows:
            span = self.tracer.start_span(
                f"{_SYSTEM} enqueue {row['event_type']}",
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": _SYSTEM,
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "enqueue",
                    "messaging.destination.name": row["event_type"],
                    "messaging.message.id": str(row["event_id"]),
                    "retryqueue.channel": row.get("channel_name") or "",
                    "retryqueue.plugin": row.get("plugin_name") or "",
                },
            )
            metadata = dict(row.get("event_metadata") or {})
            metadata[TRACE_KEY] = {"enqueue": _carrier(span)}
            row["event_metadata"] = metadata
            spans.append(span)
        try:
            yield
        except BaseException as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            for span in spans:
                span.end()

    # -- attempts --------------------------------------------------------------------------

    @contextmanager
    def attempt(self, item: ClaimedItem) -> Iterator[None]:
        """A CONSUMER span, current while the handler runs; ended by :meth:`outcome`."""
        stored = _stored(item)
        enqueued = _span_context(stored.get("enqueue"))
        previous = _span_context(stored.get("attempt"))
        replay = _span_context(stored.get("replay"))
        links = []
        if item.attempt == 1 and previous is None and replay is None:
            parent = (
                None
                if enqueued is None
                else trace.set_span_in_context(trace.NonRecordingSpan(enqueued))
            )
        else:  # a retry starts its own trace, linked to its causes
            parent = otel_context.Context()
            for kind, linked in (("enqueue", enqueued), ("previous_attempt", previous)):
                if linked is not None:
                    links.append(Link(linked, {"retryqueue.link": kind}))
            if replay is not None:
                links.append(Link(replay, {"retryqueue.link": "replay"}))
        span = self.tracer.start_span(
            f"{_SYSTEM} process {item.event_type}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": _SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": item.event_type,
                "messaging.message.id": str(item.event_id),
                "messaging.client.id": item.locked_by,
                "retryqueue.item.id": item.id,
                "retryqueue.plugin": item.plugin_name or "",
                "retryqueue.channel": item.channel_name or "",
                "retryqueue.attempt": item.attempt,
                "retryqueue.max_retries": item.max_retries,
            },
        )
        self.claim_latency.record(
            max(0.0, (item.locked_at - item.next_retry_at).total_seconds()), _labels(item)
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        started = time.perf_counter()
        try:
            yield
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            self._keep(item, span, time.perf_counter() - started, raised=True)
            raise
        except BaseException as exc:  # cancelled: abandoned at shutdown, no outcome follows
            span.set_attribute("retryqueue.outcome", "abandoned")
            span.record_exception(exc)
            span.end()
            raise
        else:
            self._keep(item, span, time.perf_counter() - started, raised=False)
        finally:
            otel_context.detach(token)

    def _keep(self, item: ClaimedItem, span: Span, duration: float, *, raised: bool) -> None:
        with self._lock:
            self._open[(item.id, item.lease_token)] = (span, duration, raised)
            while len(self._open) > _MAX_OPEN:  # outcomes never recorded (database lost)
                stale, _, _ = self._open.pop(next(iter(self._open)))
                stale.set_attribute("retryqueue.outcome", "unknown")
                stale.end()

    def outcome(
        self, item: ClaimedItem, outcome: str, delay: timedelta | None
    ) -> Mapping[str, Any] | None:
        """End the attempt's span; for a recorded failure, its context to store."""
        with self._lock:
            entry = self._open.pop((item.id, item.lease_token), None)
        if entry is None:
            return None  # not run under instrumentation, or already reported
        span, duration, raised = entry
        span.set_attribute("retryqueue.outcome", outcome)
        if delay is not None:
            span.set_attribute("retryqueue.backoff_seconds", delay.total_seconds())
        if outcome not in ("completed", "retry_scheduled", "lost") and not raised:
            span.set_status(Status(StatusCode.ERROR, outcome))
        self.attempts.add(1, _labels(item, outcome=outcome))
        self.duration.record(duration, _labels(item, outcome=outcome))
        span.end()
        if outcome in ("completed", "lost"):
            return None
        return {TRACE_KEY: {**_stored(item), "attempt": _carrier(span)}}

    # -- replay ----------------------------------------------------------------------------

    def replay(self, item_ids: list[int], requested_by: str | None) -> Mapping[str, Any] | None:
        """A span for the operator's action; the replayed items link to it."""
        with self.tracer.start_as_current_span(
            f"{_SYSTEM} replay",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": _SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": "replay",
                "messaging.batch.message_count": len(item_ids),
                "retryqueue.requested_by": requested_by or "",
            },
        ) as span:
            return {TRACE_KEY: {"replay": _carrier(span)}}

    # -- queue depth -----------------------------------------------------------------------

    def _observe_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._closed or self.engine is None:
            return []
        counts = dict.fromkeys((status.value for status in RetryStatus), 0)
        try:
            with Session(self.engine) as session:
                for row in monitoring.stats(session):
                    counts[RetryStatus(row.status).value] += row.count
        except RetryQueueError as exc:
            logger.warning("could not read the queue depth: %s", exc)
            return []
        return [Observation(count, {"status": status}) for status, count in counts.items()]

    def _observe_throttled(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._closed or self.engine is None:
            return []
        try:
            with Session(self.engine) as session:
                rows = RetryQueue().key_limits(session)
        except RetryQueueError as exc:
            logger.warning("could not read the rate limits: %s", exc)
            return []
        return [
            Observation(row.throttled_claims, {"retryqueue.limit_key": row.key})
            for row in rows
            if row.rate_per_second is not None
        ]
