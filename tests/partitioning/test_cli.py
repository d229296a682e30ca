"""``retryqueue db partitions ...``: enable, create, list, drop; refused off PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner, Result

from retryqueue import ManualClock, RetryStatus
from retryqueue.cli import CliDeps, app
from tests.partitioning.conftest import NOW, Populator, at


def run(url: str, *args: str, input: str | None = None) -> Result:
    """``retryqueue --database-url URL ARGS`` in-process, on the tests' clock."""
    deps = CliDeps(clock=ManualClock(NOW))
    return CliRunner().invoke(
        app, ["--database-url", url, *args], input=input, obj=deps, catch_exceptions=False
    )


@pytest.fixture
def url(pg_engine: Engine) -> str:
    return pg_engine.url.render_as_string(hide_password=False)


class TestCommands:
    """The commands an operator runs, in the order of docs/partitioning.md."""

    def test_enable_create_list_drop(self, url: str, populate: Populator) -> None:
        populate.item(RetryStatus.COMPLETED, at(2026, 1))
        populate.item(RetryStatus.PENDING, at(2026, 2))
        refused = run(url, "db", "partition", "enable", input="n\n")
        assert refused.exit_code == 1 and "aborted: nothing was changed" in refused.output

        enabled = run(url, "db", "partition", "enable", "--months-ahead", "1", "--yes")
        assert enabled.exit_code == 0, enabled.output
        assert "2 row(s) copied" in enabled.output

        created = run(url, "db", "partitions", "create", "--months-ahead", "3")
        assert created.exit_code == 0
        assert "created 2 partition(s): daz_retry_queue_p2026_08" in created.output
        again = run(url, "db", "partitions", "create", "--months-ahead", "3")
        assert "created 0 partition(s)" in again.output

        listed = run(url, "db", "partitions", "list", "--json")
        names = [part["name"] for part in json.loads(listed.output)]
        assert names[:2] == ["daz_retry_queue_p2026_01", "daz_retry_queue_p2026_02"]
        assert names[-1] == "daz_retry_queue_default"
        assert "daz_retry_queue_p2026_09" in run(url, "db", "partitions", "list").output

        planned = run(url, "db", "partitions", "drop", "--older-than", "90d", "--dry-run")
        assert planned.exit_code == 0
        assert "kept daz_retry_queue_p2026_02: 1 row(s) (1 pending/processing" in planned.output
        assert "would drop 1 partition(s) (1 rows)" in planned.output

        declined = run(url, "db", "partitions", "drop", "--older-than", "90d", input="n\n")
        assert declined.exit_code == 1
        dropped = run(url, "db", "partitions", "drop", "--older-than", "90d", "--yes", "--json")
        assert dropped.exit_code == 0
        outcome = json.loads(dropped.output)["partitions"]
        assert [(each["name"], each["dropped"]) for each in outcome] == [
            ("daz_retry_queue_p2026_01", True),
            ("daz_retry_queue_p2026_02", False),
        ]
        listed = run(url, "db", "partitions", "list", "--json")
        assert "daz_retry_queue_p2026_01" not in listed.output

    def test_list_on_a_plain_table_says_so(self, url: str) -> None:
        result = run(url, "db", "partitions", "list")
        assert result.exit_code == 1 and "not partitioned" in result.output


class TestSqlite:
    """Every command refuses clearly on SQLite."""

    @pytest.mark.parametrize(
        "args",
        [
            ("enable", "--yes"),
            ("create",),
            ("list",),
            ("drop", "--dry-run"),
        ],
    )
    def test_refused(self, tmp_path: Path, args: tuple[str, ...]) -> None:
        url = f"sqlite:///{tmp_path}/queue.db"
        assert run(url, "db", "upgrade").exit_code == 0
        result = run(url, "db", "partitions", *args)
        assert result.exit_code == 1
        assert "partitioning is PostgreSQL-only (this database is sqlite)" in result.output


class TestProgress:
    """Enabling holds an exclusive lock: on a terminal it shows an estimated bar meanwhile."""

    def test_enable_on_a_terminal(self, url: str, populate: Populator) -> None:
        from tests.cli.process import run_in_terminal

        populate.item(RetryStatus.COMPLETED, at(2026, 1))
        ran = run_in_terminal("--database-url", url, "db", "partition", "enable", "--yes")
        assert ran.returncode == 0, ran.stdout
        assert "partitioning 1 row(s)" in ran.stdout and "eta" in ran.stdout
        assert "partitioned daz_retry_queue: 1 row(s) copied" in ran.stdout
