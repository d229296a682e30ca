"""`retryqueue worker` and `retryqueue demo` run real workers against the database."""

from __future__ import annotations

import json
import re

import pytest

from retryqueue import RetryStatus, create_engine
from retryqueue.demo import FAILING_PLUGIN
from retryqueue.queue import RetryQueue
from tests.cli.conftest import Invoke, Seeder, invoke_cli


class TestWorkerCommand:
    """The worker command loads handlers by import path and records outcomes."""

    @pytest.mark.parametrize("kind", [[], ["--asyncio"]], ids=["threads", "asyncio"])
    def test_once(self, cli: Invoke, seed: Seeder, kind: list[str]) -> None:
        ok = cli("enqueue", "chat.message", '{"text": "hi"}', "--json")
        bad = cli("enqueue", "chat.message", '{"fail": true}', "--json")
        result = cli(
            "worker",
            "tests.cli.handlers:router",
            "--once",
            "--no-listen",
            "--worker-id",
            "cli-test",
            "--log-level",
            "WARNING",
            "--json",
            *kind,
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert (report["acquired"], report["completed"], report["failed"]) == (2, 1, 1)
        statuses = seed.statuses()
        assert statuses[json.loads(ok.stdout)["id"]] == "completed"
        assert statuses[json.loads(bad.stdout)["id"]] == "failed"
        assert seed.history_statuses(json.loads(ok.stdout)["id"]) == [("completed", "cli-test")]

    def test_breaker_option_opens_a_failing_plugins_circuit(
        self, cli: Invoke, seed: Seeder
    ) -> None:
        for _ in range(2):
            cli("enqueue", "crm.contact", "{}", "--plugin", "crm")
        args = ["worker", "tests.cli.handlers:router", "--once", "--no-listen", "--json"]
        result = cli(*args, "--asyncio", "--breaker-failures", "2", "--breaker-cooldown", "600")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["retried"] == 2
        circuits = json.loads(cli("circuits", "--json").stdout)
        assert [(c["key"], c["status"]) for c in circuits] == [("crm", "open")]

    def test_bad_handler_path(self, cli: Invoke, seed: Seeder) -> None:
        result = cli("worker", "tests.cli.no_such_module:router", "--once")
        assert result.exit_code == 1
        assert result.stderr.startswith("error: invalid argument spec:")
        assert len(result.stderr.strip().splitlines()) == 1


class TestDemo:
    """The demo finishes, ends the same way every time, and prints what the database holds."""

    def test_demo_prints_the_database_stats(self, empty_database_url: str) -> None:
        result = invoke_cli(empty_database_url, "demo", "--items", "24")
        assert result.exit_code == 0, result.output
        engine = create_engine(empty_database_url)
        try:
            with engine.connect() as connection:
                from sqlalchemy.orm import Session

                with Session(bind=connection) as session:
                    stats = RetryQueue().stats(session)
        finally:
            engine.dispose()
        by_status: dict[str, int] = {}
        for row in stats:
            by_status[RetryStatus(row.status).value] = (
                by_status.get(RetryStatus(row.status).value, 0) + row.count
            )
            line = re.compile(
                rf"^{RetryStatus(row.status).value} +{re.escape(row.event_type)} +"
                rf"{re.escape(row.plugin_name or '-')} +{row.count} ",
                re.MULTILINE,
            )
            assert line.search(result.stdout), f"no stats row for {row}"
        summary = re.search(r"demo finished in [\d.]+ s: (.*)", result.stdout)
        assert summary is not None
        assert summary.group(1) == ", ".join(f"{k} {v}" for k, v in sorted(by_status.items()))
        assert set(by_status) == {"completed", "failed", "dead_letter"}
        dead = [row for row in stats if row.status == RetryStatus.DEAD_LETTER]
        assert {row.plugin_name for row in dead} == {FAILING_PLUGIN}
        assert all(row.max_retry_count == 3 for row in dead)

    def test_refuses_a_queue_with_items(self, cli: Invoke, database_url: str, seed: Seeder) -> None:
        seed.item(RetryStatus.PENDING)
        result = invoke_cli(database_url, "demo")
        assert result.exit_code == 1
        assert "the demo needs an empty queue" in result.stderr
        assert seed.count() == 1
