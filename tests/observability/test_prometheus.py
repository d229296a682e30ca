"""Prometheus figures, alerts, the Grafana board and the logs an operator relies on."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import CircuitBreaker, ManualClock, RetryQueue
from retryqueue.metrics import QueueCollector, WorkerMetrics, serve
from retryqueue.worker import Job, PermanentError
from tests.support.logs import LogRecorder
from tests.worker.conftest import new_worker, running, wait_until, worker_kind  # noqa: F401

DOCS = Path(__file__).resolve().parents[2] / "docs"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)


def scrape(registry: CollectorRegistry) -> str:
    """The text a Prometheus scrape of ``registry`` over HTTP receives."""
    server = serve(registry, port=0)
    try:
        with urllib.request.urlopen(server.url, timeout=30) as response:
            return str(response.read().decode())
    finally:
        server.stop()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def queue_figures(engine: Engine, clock: ManualClock) -> dict[str, float]:
    """The unlabelled queue gauges of one scrape."""
    registry = CollectorRegistry()
    registry.register(QueueCollector(engine, RetryQueue(clock=clock)))
    return {
        name: value for (name, labels), value in samples(scrape(registry)).items() if not labels
    }


def fail(job: Job) -> None:
    """A handler whose failure is permanent."""
    raise PermanentError(f"order {job.event_data['order']} was rejected by the bank")


@pytest.fixture
def live_scrapes(
    engine: Engine, sessions: sessionmaker[Session], queue: RetryQueue, clock: ManualClock
) -> list[str]:
    """Real scrapes of the queue exporter and of a worker's metrics after some work."""
    worker_metrics, breaker = WorkerMetrics(), CircuitBreaker(clock=clock)
    with sessions.begin() as session:
        queue.enqueue(session, "order.pay", {"order": 1}, plugin_name="bank")
        queue.enqueue(session, "order.mail", {"order": 2}, plugin_name="mail")
        breaker.open(session, "mail", reason="maintenance")
    worker = new_worker(
        queue,
        sessions,
        {"order.pay": fail},
        listen=False,
        observers=[worker_metrics.observe],
        breaker=breaker,
    )
    assert worker.run_once().failed == 1
    registry = CollectorRegistry()
    registry.register(QueueCollector(engine, queue))
    return [scrape(registry), scrape(worker_metrics.registry)]


class TestQueueFigures:
    """The exporter's figures for circuits and queue lag."""

    def test_items_behind_a_circuit_opened_by_hand_are_not_lag(
        self, engine: Engine, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        queue = RetryQueue(clock=clock)
        breaker = CircuitBreaker(clock=clock, per_event_type=True)
        with sessions.begin() as session:
            queue.enqueue(session, "refund", {}, plugin_name="bank")
            queue.enqueue(session, "charge", {}, plugin_name="cards")
            breaker.open(session, "bank:refund", reason="bank maintenance", cooldown=7200)
            CircuitBreaker(clock=clock).open(session, "cards", reason="maintenance")
        clock.advance(3600)
        figures = queue_figures(engine, clock)
        assert figures["retryqueue_oldest_due_pending_age_seconds"] == 0
        with sessions.begin() as session:
            breaker.close(session, "bank:refund")
        assert queue_figures(engine, clock)["retryqueue_oldest_due_pending_age_seconds"] == 3600

    def test_circuits_opened_by_hand_are_told_apart(
        self, engine: Engine, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        breaker = CircuitBreaker(failure_threshold=1, clock=clock)
        with sessions.begin() as session:
            breaker.record(session, [("bank", "charge", False)])
            breaker.open(session, "mail", reason="smtp migration")
            breaker.record(session, [("sms", "send", True)])
        registry = CollectorRegistry()
        registry.register(QueueCollector(engine))
        found = samples(scrape(registry))
        by_hand = {
            dict(labels)["key"]: value
            for (name, labels), value in found.items()
            if name == "retryqueue_circuit_opened_by_hand"
        }
        assert by_hand == {"bank": 0, "mail": 1}  # success on a closed circuit stores nothing
        assert not [name for name, _ in found if name.startswith("retryqueue_circuit_transitions")]


def test_a_failed_scrape_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    empty = create_engine(f"sqlite:///{tmp_path}/no-tables.db")
    registry = CollectorRegistry()
    registry.register(QueueCollector(empty))
    with caplog.at_level(logging.WARNING, "retryqueue.metrics"):
        found = samples(scrape(registry))
    empty.dispose()
    assert found == {("retryqueue_database_up", ()): 0}
    (record,) = caplog.records
    assert "scrape failed" in record.getMessage()
    assert "no such table" in record.getMessage()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
class TestWorkerLogs:
    """What a worker says: that it started, and why an attempt failed."""

    pytestmark = pytest.mark.usefixtures("worker_kind")

    def test_startup_line_and_failure_message(
        self, sessions: sessionmaker[Session], queue: RetryQueue, worker_logs: LogRecorder
    ) -> None:
        worker = new_worker(queue, sessions, {"order.pay": fail}, listen=False, poll_interval=0.05)
        with running(worker):  # type: ignore[arg-type]
            wait_until(lambda: worker_logs.matching("started", logging.INFO))
        (started,) = worker_logs.matching("started", logging.INFO)
        assert started.getMessage().startswith(f"worker {worker.worker_id} started: routes")
        with sessions.begin() as session:
            queue.enqueue(session, "order.pay", {"order": 42})
        new_worker(queue, sessions, {"order.pay": fail}, listen=False).run_once()
        (failed,) = worker_logs.matching("attempt 1: failed", logging.ERROR)
        assert failed.getMessage().endswith("[PermanentError]: order 42 was rejected by the bank")
        assert failed.__dict__["error_message"] == "order 42 was rejected by the bank"


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
class TestShippedFiles:
    """The rules and the board shipped in docs/ hold up against real scrapes."""

    def test_grafana_board_asks_for_a_data_source_and_names_real_metrics(
        self, live_scrapes: list[str]
    ) -> None:
        board = json.loads((DOCS / "grafana-dashboard.json").read_text())
        (source,) = board["__inputs"]
        assert source["type"] == "datasource" and source["pluginId"] == "prometheus"
        wanted = "${" + source["name"] + "}"
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert {"job", "instance"} <= set(variables)
        exported = {name for text in live_scrapes for name, _ in samples(text)} | {"up"}
        panels = [p for p in board["panels"] if p["type"] != "row"]
        titles = " ".join(p["title"] for p in panels).lower()
        assert "circuit" in titles
        for panel in panels:
            assert panel["datasource"]["uid"] == wanted, panel["title"]
            for target in panel["targets"]:
                expr = target["expr"]
                named = set(re.findall(r"\b(retryqueue_[a-z_]+|up)\b(?=\{)", expr))
                assert named, expr
                assert named <= exported, (panel["title"], named - exported)
                assert 'job=~"$job"' in expr and 'instance=~"$instance"' in expr
        for variable in variables.values():
            assert variable["datasource"]["uid"] == wanted

    @needs_promtool
    def test_promtool_accepts_the_scrapes(self, live_scrapes: list[str]) -> None:
        assert PROMTOOL is not None
        for text in live_scrapes:
            done = subprocess.run(
                [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True
            )
            assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    assert PROMTOOL is not None
    for command in (
        ["check", "rules", "prometheus-alerts.yml"],
        ["test", "rules", "prometheus-alerts.test.yml"],
    ):
        done = subprocess.run([PROMTOOL, *command], cwd=DOCS, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
