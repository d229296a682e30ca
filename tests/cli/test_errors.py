"""Expected failures print one line on stderr, exit 1, and never show a password."""

from __future__ import annotations

import pytest

from tests.cli.conftest import invoke_cli


def _one_line_error(result: object) -> str:
    assert result.exit_code == 1  # type: ignore[attr-defined]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    assert result.stdout == ""  # type: ignore[attr-defined]
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return str(lines[0])


class TestErrors:
    """Bad URLs, unreachable servers and missing tables."""

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("not a url", "error: invalid database URL: cannot be parsed"),
            ("nosuchdb://host/db", "error: invalid database URL: Can't load plugin"),
        ],
    )
    def test_bad_url(self, url: str, expected: str) -> None:
        assert _one_line_error(invoke_cli(url, "stats")).startswith(expected)

    def test_unreachable_server_hides_password(self) -> None:
        line = _one_line_error(invoke_cli("postgresql://ops:s3cr3t-pw@127.0.0.1:1/queue", "stats"))
        assert "s3cr3t-pw" not in line
        assert "stats failed" in line
        assert "postgresql+psycopg://ops:***@127.0.0.1:1/queue" in line

    @pytest.mark.parametrize("command", [["stats"], ["replay", "--dry-run"], ["show", "1"]])
    def test_missing_tables(self, empty_database_url: str, command: list[str]) -> None:
        line = _one_line_error(invoke_cli(empty_database_url, *command))
        assert line.endswith("]")
        assert "run `retryqueue db upgrade`" in line

    def test_bad_duration(self, empty_database_url: str) -> None:
        line = _one_line_error(invoke_cli(empty_database_url, "stuck", "--older-than", "soon"))
        assert "invalid --older-than 'soon'" in line
