"""db upgrade/current/downgrade/stamp/sql run the packaged revisions."""

from __future__ import annotations

import json

from sqlalchemy import inspect

from retryqueue import create_engine, migrations
from tests.cli.conftest import invoke_cli


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
