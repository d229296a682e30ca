"""``retryqueue limits`` and ``circuits`` show limits and pauses; the exporter's figures."""

from __future__ import annotations

import json
from datetime import timedelta

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import ManualClock, NewItem, RetryQueue
from retryqueue.cli import CliDeps
from retryqueue.metrics import QueueCollector
from retryqueue.models import RetryLimit
from tests.cli.conftest import invoke_cli


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def stored(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(RetryLimit.limit_key)))


class TestCli:
    """Set, list, clear limits; pause and resume keys; bad input is one line, nothing written."""

    def test_set_pause_list_resume_clear(
        self, engine: Engine, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        url, deps = url_of(engine), CliDeps(clock=clock)
        with sessions.begin() as session:
            RetryQueue(clock=clock).enqueue_many(
                session,
                [
                    NewItem("capture", {}, plugin_name="pay"),
                    NewItem("send", {}, plugin_name="mail"),
                ],
            )
        assert json.loads(invoke_cli(url, "limits", "--json", deps=deps).stdout) == []

        made = invoke_cli(url, "limits", "set", "pay", "--rate", "20", "--burst", "40", deps=deps)
        assert made.exit_code == 0, made.output
        assert made.stdout.strip() == "pay: 20/s, burst 40"
        paused = invoke_cli(
            url,
            "limits",
            "pause",
            "mail:send",
            "--for",
            "30s",
            "--reason",
            "429",
            "--json",
            deps=deps,
        )
        assert paused.exit_code == 0, paused.output
        assert (
            json.loads(paused.stdout)["paused_until"]
            == (clock.now() + timedelta(seconds=30)).isoformat()
        )

        rows = {
            row["key"]: row
            for row in json.loads(invoke_cli(url, "limits", "--json", deps=deps).stdout)
        }
        assert rows["pay"]["rate_per_second"] == 20 and rows["pay"]["burst"] == 40
        assert rows["pay"]["paused_until"] is None
        assert (
            rows["mail:send"]["pause_reason"] == "429"
            and rows["mail:send"]["rate_per_second"] is None
        )
        table = invoke_cli(url, "limits", deps=deps).stdout
        assert "pay" in table and "mail:send" in table and "429" in table
        circuits = invoke_cli(url, "circuits", deps=deps)
        assert circuits.exit_code == 0 and "Paused keys (1" in circuits.stdout
        assert "mail:send" in circuits.stdout

        resumed = invoke_cli(url, "limits", "resume", "mail:send", "--json", deps=deps)
        assert json.loads(resumed.stdout) == {"key": "mail:send", "removed": True}
        cleared = invoke_cli(url, "limits", "clear", "pay", deps=deps)
        assert cleared.stdout.strip() == "pay: no limit, not paused"
        assert json.loads(invoke_cli(url, "limits", "--json", deps=deps).stdout) == []

    def test_bad_input(
        self, engine: Engine, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        url, deps = url_of(engine), CliDeps(clock=clock)
        past = (clock.now() - timedelta(minutes=1)).isoformat()
        cases = [
            (["limits", "set", "pay", "--rate", "-5", "--force"], "rate"),
            (["limits", "set", "pay", "--rate", "nan", "--force"], "rate"),
            (["limits", "set", "pay", "--rate", "5", "--burst", "0", "--force"], "burst"),
            (["limits", "set", "nobody", "--rate", "5"], "unknown plugin 'nobody'"),
            (["limits", "pause", "pay", "--force"], "give either --for or --until"),
            (["limits", "pause", "pay", "--for", "3650d", "--force"], "seconds"),
            (["limits", "pause", "pay", "--for", "-1h", "--force"], "--for"),
            (["limits", "pause", "pay", "--until", past, "--force"], "not in the future"),
            (["limits", "pause", "pay", "--until", "tomorrow", "--force"], "ISO 8601"),
            (["limits", "resume", "pay"], "'pay' is not paused"),
            (["limits", "clear", "pay"], "'pay' has no rate limit"),
            (["limits", "set", "pay:", "--rate", "1", "--force"], "key"),
        ]
        for args, wanted in cases:
            result = invoke_cli(url, *args, deps=deps)
            assert result.exit_code == 1, (args, result.output)
            assert result.stderr.startswith("error:") and wanted in result.stderr, (
                args,
                result.stderr,
            )
            assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert stored(sessions) == []


class TestMetrics:
    """Limit gauges, the throttled counter and pauses, read from the database."""

    def test_figures(
        self, engine: Engine, sessions: sessionmaker[Session], clock: ManualClock
    ) -> None:
        queue = RetryQueue(clock=clock)
        with sessions.begin() as session:
            queue.enqueue_many(
                session, [NewItem("capture", {}, plugin_name="pay") for _ in range(3)]
            )
            queue.set_limit(session, "pay", 1, burst=1)
            queue.pause_key(session, "mail", seconds=60)
        with sessions.begin() as session:
            assert len(queue.acquire(session, "w", 10)) == 1  # two left: throttled
        registry = CollectorRegistry()
        registry.register(QueueCollector(engine, queue))
        samples = {
            (sample.name, sample.labels.get("key")): sample.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for sample in family.samples
        }
        assert samples[("retryqueue_limit_rate_per_second", "pay")] == 1
        assert samples[("retryqueue_limit_burst", "pay")] == 1
        assert samples[("retryqueue_limit_tokens", "pay")] == 0
        assert samples[("retryqueue_limit_throttled_claims_total", "pay")] == 1
        assert (
            samples[("retryqueue_key_paused_until_seconds", "mail")]
            == (clock.now() + timedelta(seconds=60)).timestamp()
        )
        assert ("retryqueue_limit_rate_per_second", "mail") not in samples
