"""replay, purge and cleanup change exactly what they select, and dry runs change nothing."""

from __future__ import annotations

import json
from datetime import timedelta

from retryqueue import RetryStatus
from retryqueue.cli import CliDeps
from retryqueue.cli._context import requested_by
from tests.cli.conftest import Invoke, Seeder


class FakeTime:
    """A monotonic clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class TestReplay:
    """replay moves finished items back to pending and records who did it."""

    def test_dry_run_changes_nothing(self, cli: Invoke, seed: Seeder) -> None:
        dead = seed.item(RetryStatus.DEAD_LETTER, retry_count=1)
        failed = seed.item(RetryStatus.FAILED)
        seed.item(RetryStatus.COMPLETED)
        before = seed.statuses()
        result = cli("replay", "--dry-run", "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["count"] == 2
        assert [item["id"] for item in report["items"]] == [dead, failed]
        assert seed.statuses() == before
        assert "2 item(s) would be replayed" in cli("replay", "--dry-run").stdout
        assert seed.history_statuses(dead)[-1][0] == "dead_lettered"

    def test_filters_and_history(self, cli: Invoke, seed: Seeder) -> None:
        timeout = seed.item(RetryStatus.DEAD_LETTER, error_code="TIMEOUT", retry_count=2)
        seed.item(RetryStatus.DEAD_LETTER, error_code="AUTH")
        seed.item(RetryStatus.DEAD_LETTER, error_code="TIMEOUT", plugin="teams")
        result = cli("replay", "--error-code", "TIMEOUT", "--plugin", "slack", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"replayed": [timeout]}
        status, retry_count, _ = seed.row(timeout)
        assert (RetryStatus(status), retry_count) == (RetryStatus.PENDING, 0)
        assert seed.history_statuses(timeout)[-1] == ("requeued", requested_by())
        assert list(seed.statuses().values()).count("dead_letter") == 2

    def test_keep_retries_and_time_range(self, cli: Invoke, seed: Seeder) -> None:
        old = seed.item(RetryStatus.DEAD_LETTER, retry_count=2, age=timedelta(days=3))
        recent = seed.item(RetryStatus.DEAD_LETTER, retry_count=2)
        result = cli("replay", "--created-before", "2d", "--keep-retries")
        assert result.exit_code == 0, result.output
        assert "replayed 1 item(s)" in result.stdout
        assert seed.row(old)[:2] == (RetryStatus.PENDING, 2)
        assert RetryStatus(seed.row(recent)[0]) is RetryStatus.DEAD_LETTER

    def test_completed_only_on_request(self, cli: Invoke, seed: Seeder) -> None:
        done = seed.item(RetryStatus.COMPLETED)
        assert "no item matches the selection" in cli("replay", "--yes").stdout
        assert seed.statuses()[done] == "completed"
        result = cli("replay", "--status", "completed", "--id", str(done))
        assert "replayed 1 item(s)" in result.stdout
        assert seed.statuses()[done] == "pending"

    def test_rate_limit_spaces_a_large_redrive(self, cli: Invoke, seed: Seeder) -> None:
        ids = [seed.item(RetryStatus.DEAD_LETTER) for _ in range(100)]
        time = FakeTime()
        deps = CliDeps(sleep=time.sleep, monotonic=time.monotonic)
        result = cli("replay", "--yes", "--rate", "20", "--json", deps=deps)
        assert result.exit_code == 0, result.output
        assert sorted(json.loads(result.stdout)["replayed"]) == ids
        # 100 items at 20/s: chunks of 20, the 5th released 80/20 = 4 s after the start.
        assert time.sleeps == [1.0, 1.0, 1.0, 1.0]
        assert sum(time.sleeps) == 100 / 20 - 1
        assert set(seed.statuses().values()) == {"pending"}

    def test_fractional_rate(self, cli: Invoke, seed: Seeder) -> None:
        for _ in range(3):
            seed.item(RetryStatus.FAILED)
        time = FakeTime()
        result = cli(
            "replay",
            "-y",
            "--rate",
            "0.5",
            deps=CliDeps(sleep=time.sleep, monotonic=time.monotonic),
        )
        assert result.exit_code == 0, result.output
        assert time.sleeps == [2.0, 2.0]  # one item every two seconds


class TestPurge:
    """purge asks first, deletes only the selection, and keeps the history."""

    def test_declined_confirmation_keeps_everything(self, cli: Invoke, seed: Seeder) -> None:
        seed.item(RetryStatus.DEAD_LETTER)
        result = cli("purge", input="n\n")
        assert result.exit_code == 1
        assert "Delete 1 item(s) (dead_letter, failed)?" in result.output
        assert seed.count() == 1

    def test_yes_deletes_the_selection(self, cli: Invoke, seed: Seeder) -> None:
        dead = seed.item(RetryStatus.DEAD_LETTER)
        failed = seed.item(RetryStatus.FAILED, event_type="media.upload")
        pending = seed.item(RetryStatus.PENDING)
        processing = seed.item(RetryStatus.PROCESSING)
        result = cli("purge", "--event-type", "chat.message", "--yes", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"purged": [dead]}
        assert set(seed.statuses()) == {failed, pending, processing}
        assert seed.history_statuses(dead)  # the audit trail stays
        confirmed = cli("purge", "--status", "pending", "--status", "processing", input="y\n")
        assert "purged 1 item(s)" in confirmed.stdout
        assert set(seed.statuses()) == {failed, processing}

    def test_dry_run(self, cli: Invoke, seed: Seeder) -> None:
        seed.item(RetryStatus.FAILED)
        result = cli("purge", "--dry-run")
        assert "1 item(s) would be purged" in result.stdout
        assert seed.count() == 1


class TestCleanup:
    """cleanup deletes finished items past the retention, in batches."""

    def test_dry_run_then_real(self, cli: Invoke, seed: Seeder) -> None:
        old = [seed.item(RetryStatus.COMPLETED, age=timedelta(days=10)) for _ in range(5)]
        recent = seed.item(RetryStatus.COMPLETED)
        pending = seed.item(RetryStatus.PENDING, age=timedelta(days=1))
        expired = seed.item(RetryStatus.PENDING, age=timedelta(days=10))  # ttl is 7 days
        dry = cli("cleanup", "--retention-days", "7", "--batch-size", "2", "--dry-run", "--json")
        assert dry.exit_code == 0, dry.output
        report = json.loads(dry.stdout)
        assert report["dry_run"] is True
        assert (report["deleted_count"], report["expired_count"]) == (5, 1)
        assert seed.count() == 8
        real = cli("cleanup", "--retention-days", "7", "--batch-size", "2")
        assert real.exit_code == 0, real.output
        assert real.stdout.startswith("deleted 5 item(s)")
        assert "1 expired item(s) moved to dead_letter" in real.stdout
        assert set(seed.statuses()) == {recent, pending, expired}  # expired: a dead letter
        assert seed.statuses()[expired] == RetryStatus.DEAD_LETTER
        assert seed.history_statuses(expired)[-1][0] == "expired"
        assert not set(old) & set(seed.statuses())
