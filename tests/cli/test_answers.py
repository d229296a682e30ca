"""Commands say the right thing: the defects of issue 17, one test each."""

from __future__ import annotations

import json
from typing import Any

import pytest

from retryqueue import RetryStatus
from tests.cli.conftest import Invoke, Seeder


def _json(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _error(result: Any) -> str:
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    return str(line)


class TestFigures:
    """Reports count what their names say."""

    def test_success_rate_ignores_unfinished_items(self, cli: Invoke, seed: Seeder) -> None:
        seed.item(RetryStatus.COMPLETED, event_type="chat")
        seed.item(RetryStatus.DEAD_LETTER, event_type="chat")
        seed.item(RetryStatus.PENDING, event_type="chat")
        seed.item(RetryStatus.PROCESSING, event_type="chat")
        seed.item(RetryStatus.PENDING, event_type="fresh")  # just enqueued: no outcome yet
        rates = _json(cli("success-rate", "--json"))
        assert [(r["event_type"], r["total"], r["success_rate"]) for r in rates] == [
            ("chat", 2, 0.5)
        ]

    def test_stuck_shows_the_lock(self, cli: Invoke, seed: Seeder) -> None:
        from datetime import timedelta

        seed.item(RetryStatus.PROCESSING, age=timedelta(hours=2))
        table = cli("stuck", "--older-than", "1h").stdout
        header = next(line for line in table.splitlines() if "locked by" in line)
        assert "locked at" in header and "lock age" in header
        assert "seed-worker" in table
        assert "2h00m" in table or "1h59m" in table


class TestHistoryIsTheAuditTrail:
    """An item's history outlives the item."""

    def test_history_after_purge(self, cli: Invoke, seed: Seeder) -> None:
        dead = seed.item(RetryStatus.DEAD_LETTER, retry_count=1)
        assert cli("purge", "--yes", "--id", str(dead)).exit_code == 0
        entries = _json(cli("history", str(dead), "--json"))
        assert [entry["status"] for entry in entries][-1] == "dead_lettered"
        assert "dead_lettered" in cli("history", str(dead)).stdout
        assert _error(cli("history", "999999")) == "error: no retry queue item with id 999999"


class TestSelections:
    """Replay and purge say what they did, and an unfiltered replay asks first."""

    def test_unfiltered_replay_asks(self, cli: Invoke, seed: Seeder) -> None:
        dead = seed.item(RetryStatus.DEAD_LETTER)
        refused = cli("replay", input="n\n")
        assert refused.exit_code == 1
        assert "replay all 1 dead_letter and failed item(s)?" in refused.stderr
        assert seed.statuses()[dead] == "dead_letter"
        assert "replayed 1 item(s)" in cli("replay", input="y\n").stdout
        assert seed.statuses()[dead] == "pending"

    def test_filtered_replay_does_not_ask(self, cli: Invoke, seed: Seeder) -> None:
        dead = seed.item(RetryStatus.DEAD_LETTER)
        assert "replayed 1 item(s)" in cli("replay", "--id", str(dead)).stdout

    def test_purge_with_no_match(self, cli: Invoke, seed: Seeder) -> None:
        result = cli("purge", "--yes")
        assert result.exit_code == 0
        assert result.stdout.strip() == "no item matches the selection: nothing changed"


class TestRefusals:
    """Typos and values that cannot be meant are refused with one line; nothing is written."""

    def test_open_an_unknown_plugin(self, cli: Invoke, seed: Seeder) -> None:
        seed.item(RetryStatus.PENDING, plugin="payments", event_type="payment.capture")
        line = _error(cli("circuits", "open", "payemnts"))
        assert "unknown plugin 'payemnts'" in line and "known plugins: payments" in line
        assert _json(cli("circuits", "--json")) == []
        line = _error(cli("circuits", "open", "payments:payment.refund"))
        assert "no event type 'payment.refund'" in line
        assert _json(cli("circuits", "open", "payments", "--json"))["status"] == "open"
        assert _json(cli("circuits", "open", "newplugin", "--force", "--json"))["key"]

    def test_close_an_unknown_circuit(self, cli: Invoke, seed: Seeder) -> None:
        assert "no circuit 'nosuch'" in _error(cli("circuits", "close", "nosuch"))

    def test_enqueue_already_expired(self, cli: Invoke, seed: Seeder) -> None:
        line = _error(cli("enqueue", "chat", "{}", "--expires-at", "2020-01-01"))
        assert "invalid --expires-at '2020-01-01': already past" in line
        assert seed.count() == 0


class TestShow:
    """show displays the item's data and metadata."""

    def test_event_data_and_metadata(self, cli: Invoke, seed: Seeder) -> None:
        created = _json(
            cli("enqueue", "chat", '{"order": 42}', "--metadata", '{"trace": "t-1"}', "--json")
        )
        shown = _json(cli("show", str(created["id"]), "--json"))
        assert shown["event_data"] == {"order": 42}
        assert shown["event_metadata"] == {"trace": "t-1"}
        table = cli("show", str(created["id"])).stdout
        assert '"order": 42' in table and '"trace": "t-1"' in table


class TestHandlerSpecs:
    """The worker accepts a plain handler function as well as a router or factory."""

    def test_plain_function(self, cli: Invoke, seed: Seeder) -> None:
        ok = seed.item(RetryStatus.PENDING, event_type="anything.at.all")
        result = cli("worker", "tests.cli.handlers:plain", "--once", "--no-listen", "--json")
        assert _json(result)["completed"] == 1
        assert seed.statuses()[ok] == "completed"

    def test_pipeline_settings(self, cli: Invoke, seed: Seeder) -> None:
        ok = seed.item(RetryStatus.PENDING, event_type="anything.at.all")
        result = cli(
            "worker", "tests.cli.handlers:plain", "--once", "--no-listen", "--json",
            "--prefetch", "0", "--flush-age", "0.01", "--ready-timeout", "5", "--in-flight", "3",
        )  # fmt: skip
        assert _json(result)["completed"] == 1
        assert seed.statuses()[ok] == "completed"

    @pytest.mark.parametrize(
        ("option", "value", "named"),
        [("--ready-timeout", "-1", "ready_timeout"), ("--in-flight", "0", "in_flight")],
    )
    def test_bad_pipeline_setting_is_one_clear_error(
        self, cli: Invoke, seed: Seeder, option: str, value: str, named: str
    ) -> None:
        item = seed.item(RetryStatus.PENDING, event_type="anything.at.all")
        result = cli("worker", "tests.cli.handlers:plain", "--once", option, value)
        assert result.exit_code != 0
        assert named in result.output and "Traceback" not in result.output
        assert seed.statuses()[item] == "pending"
