"""db upgrade/current/downgrade/stamp/sql run the packaged revisions."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import inspect
from sqlalchemy.orm import Session
from typer.testing import Result

from retryqueue import RetryQueue, create_engine, migrations
from tests.cli.conftest import invoke_cli
from tests.support.revisions import HEAD, after


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


class TestMigrations:
    """The revisions go up, down and get stamped through the CLI."""

    def test_upgrade_current_downgrade(self, empty_database_url: str) -> None:
        url = empty_database_url
        before = json.loads(invoke_cli(url, "db", "current", "--json").stdout)
        assert before["current"] == []
        assert before["up_to_date"] is False
        up = invoke_cli(url, "db", "upgrade")
        assert up.exit_code == 0, up.output
        assert {"daz_retry_queue", "daz_retry_history"} <= _tables(url)
        current = invoke_cli(url, "db", "current")
        assert current.stdout.strip() == f"{migrations.heads()[0]} (head)"
        down = invoke_cli(url, "db", "downgrade", "retryqueue@base")
        assert down.exit_code == 0, down.output
        assert "daz_retry_queue" not in _tables(url)
        assert "no revision" in invoke_cli(url, "db", "current").stdout

    def test_stamp(self, empty_database_url: str) -> None:
        head = migrations.heads()[0]
        result = invoke_cli(empty_database_url, "db", "stamp", head)
        assert result.exit_code == 0, result.output
        assert json.loads(invoke_cli(empty_database_url, "db", "current", "--json").stdout) == {
            "current": [head],
            "heads": [head],
            "up_to_date": True,
        }
        assert "daz_retry_queue" not in _tables(empty_database_url)

    def test_offline_sql_needs_no_server(self) -> None:
        # Port 1: nothing listens there; rendering SQL must not try to connect.
        result = invoke_cli("postgresql://nobody:secret@127.0.0.1:1/none", "db", "sql")
        assert result.exit_code == 0, result.output
        assert "CREATE TABLE daz_retry_queue" in result.stdout
        assert "CREATE TYPE retry_status" in result.stdout
        sqlite = invoke_cli("postgresql://127.0.0.1:1/none", "db", "sql", "--dialect", "sqlite")
        assert "CREATE TABLE daz_retry_queue" in sqlite.stdout
        assert "CREATE TYPE" not in sqlite.stdout


def test_grants_print_dml_only() -> None:
    from typer.testing import CliRunner

    from retryqueue.cli import app

    result = CliRunner().invoke(app, ["db", "grants", "app_worker"])
    assert result.exit_code == 0, result.output
    assert "GRANT SELECT, INSERT, UPDATE ON public.daz_retry_queue TO app_worker;" in result.output
    assert "DELETE" not in result.output
    result = CliRunner().invoke(app, ["db", "grants", "ops", "--maintenance"])
    assert "GRANT SELECT, INSERT, DELETE ON public.daz_retry_history TO ops;" in result.output


def _one_line_error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


class TestAlembicErrors:
    """A bad revision is one line naming it, exit 1; nothing changes."""

    @pytest.mark.parametrize(
        ("command", "named"),
        [
            (["upgrade", "nosuch"], "cannot upgrade to 'nosuch'"),
            (["stamp", "bogus"], "cannot stamp 'bogus'"),
            (["downgrade", "rq0099"], "cannot downgrade to 'rq0099'"),
            (["downgrade", "retryqueue@+1"], "cannot downgrade to 'retryqueue@+1'"),
        ],
    )
    def test_one_line(self, empty_database_url: str, command: list[str], named: str) -> None:
        invoke_cli(empty_database_url, "db", "upgrade")
        line = _one_line_error(invoke_cli(empty_database_url, "db", *command))
        assert named in line
        engine = create_engine(empty_database_url)
        try:
            assert migrations.current(engine) == migrations.heads()
        finally:
            engine.dispose()


class TestReports:
    """upgrade and downgrade list what they applied, or say there was nothing to do."""

    def test_lists_revisions(self, empty_database_url: str) -> None:
        url = empty_database_url
        first = invoke_cli(url, "db", "upgrade", "rq0003")
        assert first.stdout.strip().endswith("to rq0003: applied rq0001, rq0002, rq0003")
        again = invoke_cli(url, "db", "upgrade", "rq0003")
        assert again.stdout.startswith("nothing to do:") and "is at rq0003" in again.stdout
        rest = invoke_cli(url, "db", "upgrade")
        assert rest.stdout.strip().endswith("applied " + ", ".join(after("rq0003")))
        down = invoke_cli(url, "db", "downgrade", "rq0003")
        assert down.stdout.strip().endswith("to rq0003: undid " + ", ".join(after("rq0003")[::-1]))
        assert invoke_cli(url, "db", "downgrade", "rq0003").stdout.startswith("nothing to do:")


class TestDowngradeConfirmation:
    """Dropping tables that hold rows asks first, saying how many rows would go."""

    def _with_rows(self, url: str) -> None:
        invoke_cli(url, "db", "upgrade")
        engine = create_engine(url)
        with Session(engine) as session, session.begin():
            RetryQueue().enqueue(session, "kept.or.not", {"n": 1})
            RetryQueue().enqueue(session, "kept.or.not", {"n": 2})
        engine.dispose()

    def test_refused(self, empty_database_url: str) -> None:
        self._with_rows(empty_database_url)
        result = invoke_cli(empty_database_url, "db", "downgrade", "retryqueue@base", input="n\n")
        assert result.exit_code == 1
        assert "daz_retry_queue (2 row(s))" in result.output
        assert "2 row(s) would be lost" in result.output
        assert "daz_retry_queue" in _tables(empty_database_url)

    def test_confirmed_with_yes(self, empty_database_url: str) -> None:
        self._with_rows(empty_database_url)
        result = invoke_cli(empty_database_url, "db", "downgrade", "retryqueue@base", "--yes")
        assert result.exit_code == 0, result.output
        assert "daz_retry_queue" not in _tables(empty_database_url)

    def test_no_question_without_rows(self, empty_database_url: str) -> None:
        invoke_cli(empty_database_url, "db", "upgrade")
        result = invoke_cli(empty_database_url, "db", "downgrade", "retryqueue@base")
        assert result.exit_code == 0, result.output
        assert "Go on?" not in result.output


class TestVersionTable:
    """A database migrated by a host's alembic: said so, and --version-table reaches it."""

    def test_host_version_table(self, empty_database_url: str) -> None:
        url = empty_database_url
        engine = create_engine(url)
        migrations.upgrade(engine, version_table="alembic_version")
        engine.dispose()
        current = invoke_cli(url, "db", "current")
        assert f"alembic_version holds {HEAD}" in current.stdout
        assert "--version-table alembic_version" in current.stdout
        line = _one_line_error(invoke_cli(url, "db", "upgrade"))
        assert "pass --version-table alembic_version" in line
        assert "retryqueue_alembic_version" not in _tables(url)
        ok = invoke_cli(url, "db", "upgrade", "--version-table", "alembic_version")
        assert ok.stdout.startswith("nothing to do:"), ok.output
        shown = invoke_cli(url, "db", "current", "--version-table", "alembic_version")
        assert shown.stdout.strip() == f"{HEAD} (head)"
