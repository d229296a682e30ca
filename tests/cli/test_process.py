"""The command as a process: options anywhere, one-line errors, widths, progress, startup."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from retryqueue import RetryStatus
from tests.cli.conftest import Seeder
from tests.cli.process import run, run_in_terminal

LONG_ERROR = "the payment gateway answered 503 Service Unavailable after 30 seconds of waiting"


@pytest.fixture
def backend() -> str:
    """What is tested here is the process (arguments, exit codes, terminal width), the same on
    every backend; the in-process CLI tests cover each backend. A SQLite file keeps it fast."""
    return "sqlite"


def _one_line_error(ran: object) -> str:
    assert ran.returncode == 1, ran  # type: ignore[attr-defined]
    assert "Traceback" not in ran.stderr  # type: ignore[attr-defined]
    lines = ran.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return str(lines[0])


class TestInvocation:
    """python -m retryqueue works, and global options go before or after the command."""

    def test_python_dash_m(self) -> None:
        ran = run("--help")
        assert ran.returncode == 0
        assert "Usage:" in ran.stdout and "replay" in ran.stdout

    @pytest.mark.parametrize("where", ["after", "before", "equals"])
    def test_database_url_anywhere(self, database_url: str, seed: Seeder, where: str) -> None:
        seed.item(RetryStatus.PENDING)
        args = {
            "after": ["stats", "--json", "--database-url", database_url],
            "before": ["--database-url", database_url, "stats", "--json"],
            "equals": ["stats", f"--database-url={database_url}", "--json"],
        }[where]
        ran = run(*args)
        assert ran.returncode == 0, ran.stderr
        assert [row["count"] for row in json.loads(ran.stdout)] == [1]

    def test_worker_options_after_the_handlers(self, database_url: str, seed: Seeder) -> None:
        seed.item(RetryStatus.PENDING, event_type="chat.message")
        ran = run(
            "worker", "tests.cli.handlers:router", "--database-url", database_url,
            "--once", "--no-listen", "--json",
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout)["completed"] == 1

    def test_db_takes_the_url_after_the_command(self, empty_database_url: str) -> None:
        ran = run("db", "current", "--json", "--database-url", empty_database_url)
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout)["current"] == []


class TestOneLineErrors:
    """Usage errors and bad values: one line on stderr, exit 1, never a traceback."""

    @pytest.mark.parametrize(
        ("args", "expected"),
        [
            (["stats", "--colour"], "No such option: --colour"),
            (["nosuch"], "No such command 'nosuch'"),
            (["worker"], "Missing argument 'HANDLERS'"),
            (["metrics", "--port", "70000"], "less than or equal to 65535"),
            (["worker", "x:y", "--metrics-port", "70000"], "less than or equal to 65535"),
            (["worker", "x:y", "--log-level", "LOUD"], "'LOUD' is not one of"),
        ],
    )
    def test_usage_errors(self, tmp_path: Path, args: list[str], expected: str) -> None:
        line = _one_line_error(run(*args, cwd=tmp_path))
        assert expected in line
        assert "--help" in line

    @pytest.mark.parametrize(
        "command", [["enqueue"], ["replay"], ["worker"], ["circuits", "open"], ["db", "upgrade"]]
    )
    def test_help_speaks_command_line(self, command: list[str]) -> None:
        ran = run(*command, "--help")
        assert ran.returncode == 0, ran.stderr
        assert not re.search(r"<\w|\{\w", ran.stdout), ran.stdout  # no <list[int]>, {event_type}

    def test_db_sql_takes_only_supported_dialects(self, tmp_path: Path) -> None:
        line = _one_line_error(run("db", "sql", "--dialect", "oracle", cwd=tmp_path))
        assert "'oracle'" in line
        assert "postgresql, sqlite, mysql, mariadb" in line
        for dialect in ("postgresql", "sqlite", "mysql", "mariadb"):
            ran = run("db", "sql", "--dialect", dialect, cwd=tmp_path)
            assert ran.returncode == 0, ran.stderr
            assert "CREATE TABLE daz_retry_queue" in ran.stdout

    def test_stats_without_a_url_creates_no_file(self, tmp_path: Path) -> None:
        line = _one_line_error(run("stats", cwd=tmp_path))
        assert "no database at sqlite:///retryqueue.db" in line
        assert list(tmp_path.iterdir()) == []


class TestWorkerConsole:
    """An idle worker says it started."""

    def test_startup_line(self, database_url: str) -> None:
        ran = run(
            "--database-url", database_url, "worker", "tests.cli.handlers:plain",
            "--once", "--no-listen", "--worker-id", "w-17",
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        started = [line for line in ran.stderr.splitlines() if "started" in line]
        assert len(started) == 1
        assert started[0].startswith("worker w-17 started on ")
        assert "handlers tests.cli.handlers:plain (*)" in started[0]


def _seed_for_tables(seed: Seeder) -> int:
    dead = seed.item(
        RetryStatus.DEAD_LETTER,
        event_type="media.video.uploaded",
        plugin="thumbnailer",
        error=LONG_ERROR,
        error_code="HTTP_503",
        retry_count=2,
    )
    seed.item(RetryStatus.FAILED, event_type="chat.message", plugin="legacy-webhook")
    seed.item(RetryStatus.PENDING, event_type="chat.message", plugin="slack")
    return dead


def _assert_fits(output: str, width: int) -> None:
    lines = output.splitlines()
    assert lines, "no output"
    assert max(len(line.rstrip()) for line in lines) <= width, output
    assert "…" not in output, output  # nothing cut off: long text wraps instead


class TestWidth:
    """At 80 columns the columns that matter keep their width; the rest wraps."""

    @pytest.mark.parametrize(
        "command", [["stats"], ["alerts"], ["replay", "--dry-run"], ["history", "ID"]]
    )
    def test_a_real_80_column_terminal(
        self, database_url: str, seed: Seeder, command: list[str]
    ) -> None:
        dead = _seed_for_tables(seed)
        args = [str(dead) if arg == "ID" else arg for arg in command]
        ran = run_in_terminal("--database-url", database_url, *args, columns=80)
        assert ran.returncode == 0, ran.stdout
        _assert_fits(ran.stdout, 80)
        assert "dead_letter" in ran.stdout or "dead_lettered" in ran.stdout
        if command[0] != "history":
            assert "media.video.uploaded" in ran.stdout  # event types stay whole

    def test_piped_output_follows_columns(self, database_url: str, seed: Seeder) -> None:
        _seed_for_tables(seed)
        ran = run("--database-url", database_url, "alerts", env={"COLUMNS": "80"})
        assert ran.returncode == 0, ran.stderr
        _assert_fits(ran.stdout, 80)

    def test_piped_without_columns_is_plain_text(self, database_url: str, seed: Seeder) -> None:
        _seed_for_tables(seed)
        ran = run("--database-url", database_url, "alerts")
        assert ran.returncode == 0, ran.stderr
        assert LONG_ERROR in ran.stdout  # one line, whole
        assert not set("┏━│─└") & set(ran.stdout)

    def test_wide_shows_every_column(self, database_url: str, seed: Seeder) -> None:
        _seed_for_tables(seed)
        narrow = run("--database-url", database_url, "stats", env={"COLUMNS": "80"})
        wide = run("stats", "--wide", "--database-url", database_url, env={"COLUMNS": "80"})
        header = "most retries"
        assert header not in narrow.stdout
        assert header in wide.stdout and "newest" in wide.stdout
        assert "max retries" not in wide.stdout  # it is the highest retry_count, not max_retries


class TestProgress:
    """Long commands draw a bar with an ETA on a terminal, and nothing when piped or --json."""

    def _failed(self, seed: Seeder, count: int) -> None:
        for _ in range(count):
            seed.item(RetryStatus.FAILED)

    def test_purge_on_a_terminal(self, database_url: str, seed: Seeder) -> None:
        self._failed(seed, 3)
        ran = run_in_terminal("--database-url", database_url, "purge", "--yes")
        assert ran.returncode == 0, ran.stdout
        assert "purging" in ran.stdout and "eta" in ran.stdout
        assert "purged 3 item(s)" in ran.stdout
        assert seed.count() == 0

    @pytest.mark.parametrize("command", [["cleanup"], ["replay", "--yes"]])
    def test_other_long_commands_on_a_terminal(
        self, database_url: str, seed: Seeder, command: list[str]
    ) -> None:
        self._failed(seed, 2)
        ran = run_in_terminal("--database-url", database_url, *command)
        assert ran.returncode == 0, ran.stdout
        assert "eta" in ran.stdout

    def test_rotate_keys_on_a_terminal(self, database_url: str, seed: Seeder) -> None:
        from retryqueue.encryption import KEYS_ENV, generate_key

        self._failed(seed, 2)
        ran = run_in_terminal(
            "--database-url", database_url, "rotate-keys", env={KEYS_ENV: generate_key()}
        )
        assert ran.returncode == 0, ran.stdout
        assert "re-encrypting" in ran.stdout and "eta" in ran.stdout
        assert "re-encrypted" in ran.stdout

    def test_db_upgrade_and_downgrade_on_a_terminal(self, empty_database_url: str) -> None:
        up = run_in_terminal("--database-url", empty_database_url, "db", "upgrade")
        assert up.returncode == 0, up.stdout
        assert "applying revisions" in up.stdout and "eta" in up.stdout
        assert re.search(r"applied rq0001, rq0002", up.stdout), up.stdout
        again = run_in_terminal("--database-url", empty_database_url, "db", "upgrade")
        assert again.returncode == 0, again.stdout
        assert "nothing to do" in again.stdout and "eta" not in again.stdout
        down = run_in_terminal(
            "--database-url", empty_database_url, "db", "downgrade", "retryqueue@base", "--yes"
        )
        assert down.returncode == 0, down.stdout
        assert "undoing revisions" in down.stdout and "eta" in down.stdout
        assert "undid" in down.stdout

    def test_db_upgrade_silent_when_piped(self, empty_database_url: str) -> None:
        up = run("--database-url", empty_database_url, "db", "upgrade")
        assert up.returncode == 0 and up.stderr == "", up.stderr
        assert up.stdout.startswith("upgraded ") and "applied rq0001, rq0002" in up.stdout
        down = run("--database-url", empty_database_url, "db", "downgrade", "rq0001", "--yes")
        assert down.returncode == 0 and down.stderr == "", down.stderr
        assert down.stdout.startswith("downgraded ")

    def test_silent_when_piped_or_json(self, database_url: str, seed: Seeder) -> None:
        self._failed(seed, 2)
        piped = run("--database-url", database_url, "replay", "--yes")
        assert piped.returncode == 0 and piped.stderr == ""
        quiet = run_in_terminal("--database-url", database_url, "cleanup", "--json")
        assert quiet.returncode == 0, quiet.stdout
        assert "eta" not in quiet.stdout
        assert json.loads(quiet.stdout)["dry_run"] is False
