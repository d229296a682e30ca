"""Prometheus metrics: queue figures read from the database, and worker-side counters.

:class:`QueueCollector` queries the database at every scrape, so any number of exporter
replicas report the same numbers (nothing is counted in process memory). Register it on a
:class:`~prometheus_client.CollectorRegistry` of its own, or use :func:`serve`.

:class:`WorkerMetrics` counts what one worker process did: attempts by outcome and handler
durations. Pass its :meth:`~WorkerMetrics.observe` as a worker observer. These figures are
per process; sum them in PromQL.

Don't register :class:`QueueCollector` in every worker process: each scrape runs a few
aggregate queries, so one exporter (``retryqueue metrics``) per database is enough.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from retryqueue import circuits, monitoring
from retryqueue.breaker_policy import (
    REASON_CONSECUTIVE,
    REASON_PROBE,
    REASON_PROBE_FAILED,
    REASON_PROBE_TIMED_OUT,
    REASON_RATE,
    CircuitStatus,
)
from retryqueue.errors import InvalidArgument, RetryQueueError
from retryqueue.limits import KeyLimit
from retryqueue.models import RetryStatus
from retryqueue.queue import RetryQueue
from retryqueue.results import QueueStats

__all__ = [
    "DEFAULT_ERROR_GROUPS",
    "DEFAULT_STALE_LOCK_SECONDS",
    "MAX_ERROR_GROUPS",
    "AttemptLike",
    "MetricsServer",
    "QueueCollector",
    "WorkerMetrics",
    "serve",
]

DEFAULT_STALE_LOCK_SECONDS = 300.0
DEFAULT_ERROR_GROUPS = 10
"""How many of the largest error groups ``retryqueue_error_group_items`` exports."""
MAX_ERROR_GROUPS = 100
_BREAKER_REASONS = frozenset(
    {REASON_CONSECUTIVE, REASON_RATE, REASON_PROBE, REASON_PROBE_FAILED, REASON_PROBE_TIMED_OUT}
)
logger = logging.getLogger("retryqueue.metrics")
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class QueueCollector(Collector):
    """A custom collector whose every scrape reads the queue's state from the database.

    Metrics (``plugin`` is ``""`` for items without a plugin):

    * ``retryqueue_items{status,event_type,plugin}``: queue depth per group;
    * ``retryqueue_status_items{status}``: items per status, every status present (zeros);
    * ``retryqueue_dead_letter_items``: dead letters in total;
    * ``retryqueue_failed_items``: items in failed (not retryable);
    * ``retryqueue_triage_items{error_code}``: dead-letter and failed items per error code
      (``EXPIRED``: expired unrun; ``DEADLINE_REACHED``; ``NO_HANDLER`` ...);
    * ``retryqueue_error_group_items{fingerprint,error_code}``: dead-letter and failed
      items in each of the ``error_groups`` largest error groups (see
      :mod:`retryqueue.fingerprint`; ``retryqueue dead-letters --group-by fingerprint``
      shows them): at most ``error_groups`` series, so the cardinality stays bounded;
    * ``retryqueue_items_with_deadline{status}``: items carrying a retry deadline (those
      dead-lettered at it have error code ``DEADLINE_REACHED``);
    * ``retryqueue_oldest_due_pending_age_seconds``: how long the oldest claimable pending
      item has been due (queue lag; 0 when nothing is due); items held back by an open or
      half-open circuit are left out (they wait for the circuit, not for a worker);
    * ``retryqueue_stale_locks``: processing items locked longer than ``stale_lock_seconds``;
    * ``retryqueue_circuit_state{key}``: each stored circuit, 0 closed, 1 half-open, 2 open;
    * ``retryqueue_circuit_opened_by_hand{key}``: 1 for a circuit an operator opened (its
      reason is not one of the breaker's), else 0;
    * ``retryqueue_circuit_audit_transitions{key,to_state}``: a gauge, the transitions the
      audit trail (``daz_retry_circuit_events``) holds; it drops when cleanup prunes that
      table, so it is not a counter: use ``changes(retryqueue_circuit_state[1h])`` for a
      rate of transitions;
    * ``retryqueue_limit_rate_per_second{key}``, ``retryqueue_limit_burst{key}``,
      ``retryqueue_limit_tokens{key}``: each rate-limited key's limit and tokens left;
    * ``retryqueue_limit_throttled_claims_total{key}``: claims that left the key's due
      items pending for want of tokens (stored with the limit: clearing it resets it);
    * ``retryqueue_key_paused_until_seconds{key}``: when each paused key's pause ends;
    * ``retryqueue_database_up``: 1 if the queries succeeded, else 0 (other metrics omitted).
    """

    def __init__(
        self,
        engine: Engine,
        queue: RetryQueue | None = None,
        *,
        stale_lock_seconds: float = DEFAULT_STALE_LOCK_SECONDS,
        error_groups: int = DEFAULT_ERROR_GROUPS,
    ) -> None:
        if not isinstance(error_groups, int) or not 0 <= error_groups <= MAX_ERROR_GROUPS:
            raise InvalidArgument(
                "error_groups", f"expected 0 to {MAX_ERROR_GROUPS}, got {error_groups!r}"
            )
        self.engine = engine
        self.queue = queue or RetryQueue()
        self.stale_lock_seconds = stale_lock_seconds
        self.error_groups = error_groups

    def describe(self) -> Iterable[Metric]:
        """Nothing: describing would need a database round trip at registration time."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Read the figures; a database failure yields ``retryqueue_database_up 0`` only."""
        up = GaugeMetricFamily(
            "retryqueue_database_up", "1 if the exporter could read the queue's tables."
        )
        try:
            families = list(self._families())
        except RetryQueueError as exc:
            logger.warning("scrape failed, reporting retryqueue_database_up 0: %s", exc)
            up.add_metric([], 0.0)
            return [up]
        up.add_metric([], 1.0)
        return [up, *families]

    def check(self) -> None:
        """Run the scrape queries once, raising the :class:`RetryQueueError` if they fail."""
        list(self._families())

    def _families(self) -> Iterator[Metric]:
        with Session(self.engine) as session:
            stats = monitoring.stats(session)
            gauges = monitoring.queue_gauges(
                session, self.queue.now(session), self.stale_lock_seconds
            )
            triage = monitoring.dead_letter_groups(session, "error_code")
            groups = (
                monitoring.error_groups(session, limit=self.error_groups)
                if self.error_groups
                else []
            )
            circuit_states = circuits.circuit_states(session)
            transitions = circuits.transition_counts(session)
            key_limits = self.queue.key_limits(session)
        depth = GaugeMetricFamily(
            "retryqueue_items",
            "Queue items per status, event type and plugin.",
            labels=["status", "event_type", "plugin"],
        )
        per_status = dict.fromkeys((status.value for status in RetryStatus), 0)
        for row in stats:
            status = RetryStatus(row.status).value
            depth.add_metric([status, row.event_type, row.plugin_name or ""], row.count)
            per_status[status] += row.count
        yield depth
        by_status = GaugeMetricFamily(
            "retryqueue_status_items", "Queue items per status.", labels=["status"]
        )
        for status, count in per_status.items():
            by_status.add_metric([status], count)
        yield by_status
        yield GaugeMetricFamily(
            "retryqueue_dead_letter_items",
            "Items in dead_letter (need manual triage or replay).",
            value=per_status[RetryStatus.DEAD_LETTER.value],
        )
        yield GaugeMetricFamily(
            "retryqueue_failed_items",
            "Items in failed (not retryable: no handler, permanent error; need a fix).",
            value=per_status[RetryStatus.FAILED.value],
        )
        by_code = GaugeMetricFamily(
            "retryqueue_triage_items",
            "Dead-letter and failed items per error code (EXPIRED: never ran before expiry; "
            "DEADLINE_REACHED: retry deadline; NO_HANDLER ...).",
            labels=["error_code"],
        )
        for group in triage:
            by_code.add_metric([group.key or ""], group.count)
        yield by_code
        by_group = GaugeMetricFamily(
            "retryqueue_error_group_items",
            f"Dead-letter and failed items in each of the {self.error_groups} largest error "
            "groups (error code and fingerprint; retryqueue dead-letters --group-by "
            "fingerprint).",
            labels=["fingerprint", "error_code"],
        )
        for error_group in groups:
            by_group.add_metric(
                [error_group.fingerprint or "", error_group.error_code or ""], error_group.count
            )
        yield by_group
        with_deadline = GaugeMetricFamily(
            "retryqueue_items_with_deadline",
            "Queue items carrying a retry deadline, per status.",
            labels=["status"],
        )
        for status, count in _deadline_counts(stats).items():
            with_deadline.add_metric([status], count)
        yield with_deadline
        yield GaugeMetricFamily(
            "retryqueue_oldest_due_pending_age_seconds",
            "Seconds the oldest claimable pending item has been due (0 if none).",
            value=gauges.oldest_due_pending_age_seconds,
        )
        yield GaugeMetricFamily(
            "retryqueue_stale_locks",
            "Processing items whose lock is older than the stale-lock threshold.",
            value=gauges.stale_locks,
        )
        yield from _circuit_families(circuit_states, transitions)
        yield from _limit_families(key_limits)


def _deadline_counts(stats: list[QueueStats]) -> dict[str, int]:
    counts = dict.fromkeys((status.value for status in RetryStatus), 0)
    for row in stats:
        counts[RetryStatus(row.status).value] += row.deadline_count
    return counts


_CIRCUIT_STATE_VALUES = {
    CircuitStatus.CLOSED: 0.0,
    CircuitStatus.HALF_OPEN: 1.0,
    CircuitStatus.OPEN: 2.0,
}


def _circuit_families(
    states: Iterable[circuits.CircuitState],
    transitions: Iterable[tuple[str, CircuitStatus, int]],
) -> Iterator[Metric]:
    state = GaugeMetricFamily(
        "retryqueue_circuit_state",
        "Circuit breaker state per key: 0 closed, 1 half-open, 2 open.",
        labels=["key"],
    )
    by_hand = GaugeMetricFamily(
        "retryqueue_circuit_opened_by_hand",
        "1 if an operator opened the circuit (not the breaker), else 0.",
        labels=["key"],
    )
    for circuit in states:
        state.add_metric([circuit.key], _CIRCUIT_STATE_VALUES[circuit.status])
        manual = circuit.status is not CircuitStatus.CLOSED and (
            circuit.reason not in _BREAKER_REASONS
        )
        by_hand.add_metric([circuit.key], 1.0 if manual else 0.0)
    yield state
    yield by_hand
    counted = GaugeMetricFamily(
        "retryqueue_circuit_audit_transitions",
        "Transitions per key and state entered that the audit trail holds (drops when "
        "cleanup prunes it; not a counter).",
        labels=["key", "to_state"],
    )
    for key, to_state, count in transitions:
        counted.add_metric([key, to_state.value], count)
    yield counted


def _limit_families(rows: Iterable[KeyLimit]) -> Iterator[Metric]:
    rate = GaugeMetricFamily(
        "retryqueue_limit_rate_per_second", "A key's rate limit, items per second.", labels=["key"]
    )
    burst = GaugeMetricFamily("retryqueue_limit_burst", "A key's burst.", labels=["key"])
    tokens = GaugeMetricFamily(
        "retryqueue_limit_tokens", "A rate-limited key's tokens left now.", labels=["key"]
    )
    throttled = CounterMetricFamily(
        "retryqueue_limit_throttled_claims",
        "Claims that left a rate-limited key's due items pending for want of tokens.",
        labels=["key"],
    )
    paused = GaugeMetricFamily(
        "retryqueue_key_paused_until_seconds",
        "When a paused key's pause ends (Unix time); only keys paused now.",
        labels=["key"],
    )
    for row in rows:
        if row.rate_per_second is not None and row.burst is not None:
            rate.add_metric([row.key], row.rate_per_second)
            burst.add_metric([row.key], row.burst)
            tokens.add_metric([row.key], row.tokens or 0.0)
            throttled.add_metric([row.key], float(row.throttled_claims))
        if row.paused_until is not None:
            paused.add_metric([row.key], row.paused_until.timestamp())
    yield from (rate, burst, tokens, throttled, paused)


class AttemptLike(Protocol):
    """What :meth:`WorkerMetrics.observe` reads from a worker's attempt result."""

    @property
    def event_type(self) -> str:
        """The item's event type."""
        ...

    @property
    def plugin_name(self) -> str | None:
        """The item's plugin, if any."""
        ...

    @property
    def outcome(self) -> str:
        """What happened: completed, retry, failed, dead_letter, ..."""
        ...

    @property
    def duration_seconds(self) -> float:
        """How long the handler ran."""
        ...


class WorkerMetrics:
    """Worker-side counters and histograms, fed one attempt result at a time.

    * ``retryqueue_worker_attempts_total{event_type,plugin,outcome}``
    * ``retryqueue_worker_handler_duration_seconds{event_type,outcome}`` (histogram)
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.attempts = Counter(
            "retryqueue_worker_attempts",
            "Handler attempts by outcome.",
            ["event_type", "plugin", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "retryqueue_worker_handler_duration_seconds",
            "Handler run time in seconds.",
            ["event_type", "outcome"],
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )

    def observe(self, result: AttemptLike) -> None:
        """Count one attempt (use as a worker observer)."""
        outcome = str(getattr(result.outcome, "value", result.outcome))
        self.attempts.labels(result.event_type, result.plugin_name or "", outcome).inc()
        self.duration.labels(result.event_type, outcome).observe(
            max(0.0, float(result.duration_seconds))
        )

    __call__ = observe


@dataclass
class MetricsServer:
    """A running /metrics HTTP server; :meth:`stop` shuts it down and joins its thread."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        """The scrape URL."""
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and release the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve(
    registry: CollectorRegistry, *, host: str = "127.0.0.1", port: int = 9464
) -> MetricsServer:
    """Serve ``registry`` on ``http://host:port/metrics`` from a daemon thread.

    ``port=0`` picks a free port (see :attr:`MetricsServer.port`).
    """
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound = server.server_address
    display_host = host if host not in ("", "0.0.0.0") else "127.0.0.1"
    return MetricsServer(display_host, int(bound[1]), server, thread)
