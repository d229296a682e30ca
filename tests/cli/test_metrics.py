"""The /metrics endpoint: database figures and worker counters, read by Prometheus' parser."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from retryqueue import InvalidArgument, RetryQueue, RetryStatus, create_engine
from retryqueue.cli import CliDeps
from retryqueue.metrics import QueueCollector, WorkerMetrics, serve
from tests.cli.conftest import Invoke, Seeder


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


class TestQueueCollector:
    """Every scrape reads the database."""

    def test_http_scrape(self, engine: Engine, seed: Seeder) -> None:
        seed.item(RetryStatus.DEAD_LETTER, plugin="teams")
        seed.item(RetryStatus.DEAD_LETTER, plugin="teams")
        seed.item(RetryStatus.COMPLETED)
        seed.item(RetryStatus.PENDING, age=timedelta(minutes=10))
        seed.item(RetryStatus.PROCESSING, age=timedelta(hours=1))
        seed.item(RetryStatus.PROCESSING)
        registry = CollectorRegistry()
        registry.register(QueueCollector(engine, stale_lock_seconds=600))
        server = serve(registry, port=0)
        try:
            samples = _samples(_scrape(server.url))
        finally:
            server.stop()
        assert samples[("retryqueue_database_up", ())] == 1
        assert (
            samples[
                (
                    "retryqueue_items",
                    (
                        ("event_type", "chat.message"),
                        ("plugin", "teams"),
                        ("status", "dead_letter"),
                    ),
                )
            ]
            == 2
        )
        assert samples[("retryqueue_status_items", (("status", "failed"),))] == 0
        assert samples[("retryqueue_status_items", (("status", "processing"),))] == 2
        assert samples[("retryqueue_dead_letter_items", ())] == 2
        assert samples[("retryqueue_stale_locks", ())] == 1
        age = samples[("retryqueue_oldest_due_pending_age_seconds", ())]
        assert 600 <= age < 600 + 120  # due 10 minutes ago (plus the test's own run time)

    def test_database_down_is_a_metric_not_an_error(self) -> None:
        engine = create_engine("postgresql://nobody@127.0.0.1:1/none")
        try:
            registry = CollectorRegistry()
            registry.register(QueueCollector(engine))
            samples = _samples(generate_latest(registry).decode())
        finally:
            engine.dispose()
        assert samples == {("retryqueue_database_up", ()): 0.0}


@dataclass(frozen=True)
class Attempt:
    """Has the attributes of the worker's AttemptResult."""

    item_id: int
    event_type: str
    plugin_name: str | None
    attempt: int
    outcome: str
    duration_seconds: float
    error_code: str | None = None


class TestWorkerMetrics:
    """observe() counts attempts by outcome and records handler durations."""

    def test_counters_and_histogram(self) -> None:
        metrics = WorkerMetrics()
        metrics.observe(Attempt(1, "chat.message", "slack", 1, "completed", 0.02))
        metrics.observe(Attempt(2, "chat.message", "slack", 1, "retry_scheduled", 0.3))
        metrics(Attempt(2, "chat.message", "slack", 2, "completed", 0.04))
        metrics.observe(Attempt(3, "media.upload", None, 1, "dead_lettered", 7.0, "X"))
        samples = _samples(generate_latest(metrics.registry).decode())
        attempts = "retryqueue_worker_attempts_total"
        assert (
            samples[
                (
                    attempts,
                    (("event_type", "chat.message"), ("outcome", "completed"), ("plugin", "slack")),
                )
            ]
            == 2
        )
        assert (
            samples[
                (
                    attempts,
                    (("event_type", "media.upload"), ("outcome", "dead_lettered"), ("plugin", "")),
                )
            ]
            == 1
        )
        duration = "retryqueue_worker_handler_duration_seconds"
        completed = (("event_type", "chat.message"), ("outcome", "completed"))
        assert samples[(f"{duration}_count", completed)] == 2
        assert samples[(f"{duration}_sum", completed)] == pytest.approx(0.06)
        assert samples[(f"{duration}_bucket", (*completed[:1], ("le", "0.025"), completed[1]))] == 1


class TestErrorGroupMetric:
    """retryqueue_error_group_items: the largest groups only, labelled as the CLI shows them."""

    def test_top_groups_bounded(self, engine: Engine, seed: Seeder) -> None:
        for code, copies in (("HTTP_503", 3), ("DEADLOCK", 2), ("TIMEOUT", 1), ("AUTH", 1)):
            for n in range(copies):
                seed.item(RetryStatus.DEAD_LETTER, error_code=code, error=f"{code} id {n * 31}")
        seed.item(RetryStatus.FAILED, error_code="HTTP_503", error="HTTP_503 id 9 #1")
        seed.item(RetryStatus.COMPLETED)

        def scrape(**options: int) -> dict[tuple[str, str], float]:
            registry = CollectorRegistry()
            registry.register(QueueCollector(engine, **options))
            return {
                (dict(labels)["error_code"], dict(labels)["fingerprint"]): value
                for (name, labels), value in _samples(generate_latest(registry).decode()).items()
                if name == "retryqueue_error_group_items"
            }

        with Session(engine) as session:
            groups = RetryQueue().error_groups(session)
        top = scrape(error_groups=2)
        assert top == {
            ("HTTP_503", str(groups[0].fingerprint)): 4,
            ("DEADLOCK", str(groups[1].fingerprint)): 2,
        }
        assert len(scrape()) == 4  # default 10: every group here
        assert scrape(error_groups=0) == {}
        for bad in (-1, 101):
            with pytest.raises(InvalidArgument, match="error_groups"):
                QueueCollector(engine, error_groups=bad)


class TestMetricsCommand:
    """`retryqueue metrics` serves until told to stop."""

    def test_serves_and_stops(self, cli: Invoke, seed: Seeder) -> None:
        seed.item(RetryStatus.FAILED)
        scraped: list[str] = []
        result = cli(
            "metrics",
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            "--error-groups",
            "1",
            deps=CliDeps(serve_until=lambda url: scraped.append(_scrape(url))),
        )
        assert result.exit_code == 0, result.output
        assert "serving queue metrics on http://127.0.0.1:" in result.stderr
        samples = _samples(scraped[0])
        assert samples[("retryqueue_status_items", (("status", "failed"),))] == 1
        groups = [key for key in samples if key[0] == "retryqueue_error_group_items"]
        assert len(groups) == 1

    def test_fails_fast_without_tables(self, empty_database_url: str) -> None:
        from tests.cli.conftest import invoke_cli

        result = invoke_cli(empty_database_url, "metrics", "--port", "0")
        assert result.exit_code == 1
        assert "db upgrade" in result.stderr
