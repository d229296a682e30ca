"""Read-only commands, as tables and as JSON, on every backend."""

from __future__ import annotations

import json
from datetime import timedelta

from retryqueue import RetryStatus
from tests.cli.conftest import Invoke, Seeder


def _json(result: object) -> object:
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    return json.loads(result.stdout)  # type: ignore[attr-defined]


class TestEnqueue:
    """enqueue writes one row with every column given as an option."""

    def test_argument_and_options(self, cli: Invoke, seed: Seeder) -> None:
        result = cli(
            "enqueue",
            "media.upload",
            '{"file": "a.png"}',
            "--channel",
            "photos",
            "--plugin",
            "s3",
            "--priority",
            "8",
            "--max-retries",
            "5",
            "--tag",
            "x",
            "--tag",
            "y",
            "--correlation-id",
            "c-1",
            "--metadata",
            '{"source": "cli"}',
            "--json",
        )
        created = _json(result)
        assert created["created"] is True
        shown = _json(cli("show", str(created["id"]), "--json"))
        assert shown["event_type"] == "media.upload"
        assert shown["channel_name"] == "photos"
        assert shown["plugin_name"] == "s3"
        assert shown["priority"] == 8
        assert shown["max_retries"] == 5
        assert shown["tags"] == ["x", "y"]
        assert shown["correlation_id"] == "c-1"
        assert shown["status"] == "pending"

    def test_data_from_stdin_and_idempotent_event_id(self, cli: Invoke, seed: Seeder) -> None:
        event_id = "0d7f7a6e-8a52-4cb6-9b0b-2f6f0c1f9e11"
        first = cli("enqueue", "chat.message", "--event-id", event_id, input='{"text": "hi"}')
        assert first.exit_code == 0, first.output
        assert "enqueued item" in first.stdout
        again = cli("enqueue", "chat.message", "-", "--event-id", event_id, input="{}")
        assert again.exit_code == 0
        assert "already queued" in again.stdout
        assert seed.count() == 1

    def test_invalid_input_is_one_line(self, cli: Invoke, seed: Seeder) -> None:
        result = cli("enqueue", "chat.message", "{}", "--priority", "11")
        assert result.exit_code == 1
        assert result.stderr.strip().splitlines() == [
            "error: invalid argument priority: must be between 1 and 10, got 11"
        ]
        assert seed.count() == 0


class TestMonitoring:
    """stats, alerts, stuck, show, history, throughput and success-rate report the rows."""

    def test_stats_table_and_json(self, cli: Invoke, seed: Seeder) -> None:
        seed.item(RetryStatus.COMPLETED)
        seed.item(RetryStatus.COMPLETED)
        seed.item(RetryStatus.DEAD_LETTER, plugin="teams", retry_count=2)
        seed.item(RetryStatus.PENDING)
        rows = _json(cli("stats", "--json"))
        counts = {(row["status"], row["plugin_name"]): row["count"] for row in rows}
        assert counts == {
            ("completed", "slack"): 2,
            ("dead_letter", "teams"): 1,
            ("pending", "slack"): 1,
        }
        table = cli("stats")
        assert table.exit_code == 0
        assert "dead_letter" in table.stdout
        total_line = next(line for line in table.stdout.splitlines() if "total" in line)
        assert " 4 " in total_line

    def test_alerts_and_stuck(self, cli: Invoke, seed: Seeder) -> None:
        dead = seed.item(RetryStatus.DEAD_LETTER, error="gateway said no")
        stuck = seed.item(RetryStatus.PROCESSING, age=timedelta(hours=2))
        fresh = seed.item(RetryStatus.PROCESSING)
        reasons = {row["item_id"]: row["reason"] for row in _json(cli("alerts", "--json"))}
        assert reasons[dead].startswith("dead letter")
        assert reasons[stuck] == "stale lock"
        assert fresh not in reasons
        assert [row["id"] for row in _json(cli("stuck", "--older-than", "1h", "--json"))] == [stuck]
        assert {row["id"] for row in _json(cli("stuck", "--older-than", "0s", "--json"))} == {
            stuck,
            fresh,
        }
        table = cli("alerts")
        assert "gateway said no" in table.stdout

    def test_show_and_history(self, cli: Invoke, seed: Seeder) -> None:
        item = seed.item(RetryStatus.DEAD_LETTER, retry_count=2, error_code="TIMEOUT")
        shown = cli("show", str(item))
        assert shown.exit_code == 0
        assert "dead_letter" in shown.stdout and "TIMEOUT" in shown.stdout
        entries = _json(cli("history", str(item), "--json"))
        assert [entry["status"] for entry in entries][-1] == "dead_lettered"
        assert [entry["attempt_number"] for entry in entries] == [1, 2, 3]
        missing = cli("history", "999999")
        assert missing.exit_code == 1
        assert missing.stderr.strip() == "error: no retry queue item with id 999999"

    def test_throughput_bars(self, cli: Invoke, seed: Seeder) -> None:
        for _ in range(4):
            seed.item(RetryStatus.PENDING)
        seed.item(RetryStatus.PENDING, age=timedelta(hours=3))
        hours = _json(cli("throughput", "--hours", "24", "--json"))
        assert sorted(row["count"] for row in hours) == [1, 4]
        table = cli("throughput").stdout
        bars = [line.count("█") for line in table.splitlines() if "█" in line]
        assert bars == [10, 40]  # the peak hour gets the full bar, scaled linearly
        assert len([line for line in table.splitlines() if ":00 " in line]) == 4  # gaps filled

    def test_success_rate(self, cli: Invoke, seed: Seeder) -> None:
        seed.item(RetryStatus.COMPLETED, event_type="chat.message")
        seed.item(RetryStatus.FAILED, event_type="chat.message")
        seed.item(RetryStatus.COMPLETED, event_type="media.upload")
        rates = {
            row["event_type"]: row["success_rate"] for row in _json(cli("success-rate", "--json"))
        }
        assert rates == {"chat.message": 0.5, "media.upload": 1.0}
        assert "50.0%" in cli("success-rate").stdout

    def test_dead_letter_groups(self, cli: Invoke, seed: Seeder) -> None:
        seed.item(RetryStatus.DEAD_LETTER, error_code="TIMEOUT", plugin="slack")
        seed.item(RetryStatus.DEAD_LETTER, error_code="TIMEOUT", plugin="teams")
        seed.item(RetryStatus.DEAD_LETTER, error_code="AUTH", plugin="teams", error="bad token")
        seed.item(RetryStatus.FAILED, error_code="NO_HANDLER", plugin="crm")  # triage too
        seed.item(RetryStatus.COMPLETED, error_code="AUTH")
        by_code = _json(cli("dead-letters", "--group-by", "error_code", "--json"))
        assert [(group["key"], group["count"]) for group in by_code] == [
            ("TIMEOUT", 2),
            ("AUTH", 1),
            ("NO_HANDLER", 1),
        ]
        assert by_code[1]["sample_error"] == "bad token #1"
        by_plugin = _json(cli("dead-letters", "--group-by", "plugin", "--json"))
        assert [(group["key"], group["count"]) for group in by_plugin] == [
            ("teams", 2),
            ("crm", 1),
            ("slack", 1),
        ]
        bad = cli("dead-letters", "--group-by", "colour")
        assert bad.exit_code == 1
        assert bad.stderr.startswith("error: invalid --group-by 'colour'")
        assert "fingerprint" in bad.stderr
