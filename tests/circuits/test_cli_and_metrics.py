"""``retryqueue circuits`` and the circuit metrics, against each backend."""

from __future__ import annotations

import json
from datetime import timedelta

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import CircuitBreaker, ManualClock, RetryQueue
from retryqueue.cli import CliDeps
from retryqueue.metrics import QueueCollector
from tests.cli.conftest import invoke_cli


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


class TestCli:
    """List, open, close and audit circuits from the shell."""

    def test_open_list_close_events(self, engine: Engine, clock: ManualClock) -> None:
        url, deps = url_of(engine), CliDeps(clock=clock)
        empty = invoke_cli(url, "circuits", "--json", deps=deps)
        assert empty.exit_code == 0, empty.output
        assert json.loads(empty.stdout) == []

        opened = invoke_cli(
            url,
            "circuits",
            "open",
            "payments",
            "--force",
            "--for",
            "10m",
            "--reason",
            "db down",
            deps=deps,
        )
        assert opened.exit_code == 0, opened.output
        assert opened.stdout.startswith("circuit payments: open until ")

        listed = invoke_cli(url, "circuits", "--json", deps=deps)
        (row,) = json.loads(listed.stdout)
        assert row["key"] == "payments" and row["status"] == "open"
        assert row["open_until"] == (clock.now() + timedelta(minutes=10)).isoformat()
        assert row["reason"] == "db down" and row["cooldown_seconds"] == 600
        table = invoke_cli(url, "circuits", deps=deps)
        assert "payments" in table.stdout and "open" in table.stdout

        closed = invoke_cli(url, "circuits", "close", "payments", "--json", deps=deps)
        assert json.loads(closed.stdout)["status"] == "closed"

        events = invoke_cli(url, "circuits", "events", "payments", "--json", deps=deps)
        trail = [(e["from_status"], e["to_status"], e["reason"]) for e in json.loads(events.stdout)]
        assert trail == [("open", "closed", "manual_close"), ("closed", "open", "db down")]
        assert all(e["actor"].startswith("cli") for e in json.loads(events.stdout))
        assert "manual_close" in invoke_cli(url, "circuits", "events", deps=deps).stdout

    def test_bad_input_is_one_line_on_stderr(self, engine: Engine) -> None:
        result = invoke_cli(
            url_of(engine), "circuits", "open", "payments", "--force", "--for", "soon"
        )
        assert result.exit_code == 1
        assert result.stderr.startswith("error: invalid --for 'soon'")
        result = invoke_cli(url_of(engine), "circuits", "open", "x" * 600, "--force")
        assert result.exit_code == 1 and "invalid argument key" in result.stderr


class TestMetrics:
    """A gauge per circuit and a transition counter, read from the database at each scrape."""

    def test_circuit_gauges_and_transitions(
        self, engine: Engine, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        breaker = CircuitBreaker(failure_threshold=1, cooldown=30, clock=clock)
        with sessions.begin() as session:
            breaker.record(session, [("pay", "a", False), ("mail", "a", False), ("sms", "a", True)])
            breaker.record(session, [("sms", "a", False)])
            breaker.close(session, "sms")
        clock.advance(30)
        with sessions.begin() as session:
            queue = RetryQueue(clock=clock)
            for plugin in ("mail", "pay"):  # work to probe
                queue.enqueue(session, "a", {}, plugin_name=plugin)
            assert breaker.gate(session).probes == ("mail", "pay")
            breaker.record(session, [("mail", "a", True)])
        registry = CollectorRegistry()
        registry.register(QueueCollector(engine))
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for sample in family.samples
        }
        assert samples[("retryqueue_database_up", ())] == 1
        state = {
            labels[0][1]: value
            for (name, labels), value in samples.items()
            if name == "retryqueue_circuit_state"
        }
        assert state == {"mail": 0, "pay": 1, "sms": 0}
        transitions = {
            (dict(labels)["key"], dict(labels)["to_state"]): value
            for (name, labels), value in samples.items()
            if name == "retryqueue_circuit_audit_transitions"
        }
        assert transitions == {
            ("mail", "open"): 1,
            ("mail", "half_open"): 1,
            ("mail", "closed"): 1,
            ("pay", "open"): 1,
            ("pay", "half_open"): 1,
            ("sms", "open"): 1,
            ("sms", "closed"): 1,
        }
