"""complete, fail and release by id: the operator's explicit path past the lease."""

from __future__ import annotations

import json

from retryqueue import RetryStatus
from retryqueue.cli._context import requested_by
from tests.cli.conftest import Invoke, Seeder


class TestOperatorOutcomes:
    """Each command acts on the ids given, whoever holds them, and says what it changed."""

    def test_complete_a_processing_item(self, cli: Invoke, seed: Seeder) -> None:
        held = seed.item(RetryStatus.PROCESSING)
        result = cli("complete", str(held), "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"completed": [held], "unchanged": []}
        assert seed.statuses()[held] == "completed"
        assert seed.history_statuses(held) == [("completed", requested_by())]

    def test_fail_pending_items_at_once(self, cli: Invoke, seed: Seeder) -> None:
        first, second = seed.item(RetryStatus.PENDING), seed.item(RetryStatus.PENDING)
        result = cli("fail", str(first), str(second), "--message", "bad data")
        assert result.exit_code == 0, result.output
        assert "failed 2 item(s)" in result.stdout
        assert {seed.statuses()[i] for i in (first, second)} == {"failed"}

    def test_release_gives_a_held_item_back(self, cli: Invoke, seed: Seeder) -> None:
        held = seed.item(RetryStatus.PROCESSING)
        done = seed.item(RetryStatus.COMPLETED)
        result = cli("release", str(held), str(done))
        assert result.exit_code == 0, result.output
        assert "released 1 item(s)" in result.stdout
        assert str(done) in result.stderr  # unchanged, and said so
        assert seed.statuses() == {held: "pending", done: "completed"}
        assert seed.history_statuses(held) == []

    def test_nothing_to_change_is_an_error(self, cli: Invoke, seed: Seeder) -> None:
        done = seed.item(RetryStatus.COMPLETED)
        result = cli("complete", str(done), "424242")
        assert result.exit_code == 1
        assert "no item completed" in result.stderr
        assert "Traceback" not in result.output
