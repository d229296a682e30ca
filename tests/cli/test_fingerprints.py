"""dead-letters --group-by fingerprint, and replay/purge --fingerprint: what a group shows is
what the commands act on, on every backend."""

from __future__ import annotations

import itertools
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from retryqueue import RetryQueue, RetryStatus
from retryqueue.cli import CliDeps
from retryqueue.fingerprint import add_rule, fingerprint, reset_rules
from retryqueue.models import RetryHistory, RetryItem
from tests.cli.conftest import Invoke, Seeder
from tests.cli.test_admin import FakeTime

# One failure each, seen with different values: the seeder appends " #1" to a dead
# letter's message (a failed item's message is as given).
HTTP_503 = "503 Server Error: Service Unavailable for url: https://api.test/v1/orders/{n} (req {r})"
DEADLOCK = "deadlock detected DETAIL: Process {n} waits for ShareLock on transaction {n}0"
UNIQUE = 'duplicate key value violates unique constraint "{name}" DETAIL: Key (id)=({n})'


def _http(n: int) -> str:
    """An HTTP 503 for order ``n``, with its own request id."""
    return HTTP_503.format(n=n, r=f"req_{n * 7919:x}f{n}")


def _json(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _seed_groups(seed: Seeder) -> dict[str, list[int]]:
    """Three HTTP 503s (two plugins, dead and failed), two deadlocks, two unique violations
    on different constraints, and a completed item (never in a group)."""
    items: dict[str, list[int]] = {"http": [], "deadlock": [], "orders_pkey": [], "users": []}
    for n, plugin in ((17, "billing"), (4242, "billing"), (9, "mail")):
        status = RetryStatus.FAILED if plugin == "mail" else RetryStatus.DEAD_LETTER
        error = _http(n) + (" #1" if status is RetryStatus.FAILED else "")
        items["http"].append(seed.item(status, error_code="HTTPError", plugin=plugin, error=error))
    for n in (12345, 812):
        error = DEADLOCK.format(n=n)
        items["deadlock"].append(
            seed.item(RetryStatus.DEAD_LETTER, error_code="DeadlockDetected", error=error)
        )
    for name, n in (("orders_pkey", 42), ("users_email_key", 7)):
        error = UNIQUE.format(name=name, n=n)
        key = "orders_pkey" if name == "orders_pkey" else "users"
        items[key].append(
            seed.item(RetryStatus.DEAD_LETTER, error_code="UniqueViolation", error=error)
        )
    seed.item(RetryStatus.COMPLETED)
    return items


def _groups(cli: Invoke) -> dict[str, dict[str, Any]]:
    """The JSON groups by fingerprint."""
    return {group["fingerprint"]: group for group in _json(cli(*GROUP_BY, "--json"))}


GROUP_BY = ("dead-letters", "--group-by", "fingerprint")


class TestGroupBy:
    """The groups: one per failure, counted, with plugins, times and a sample."""

    def test_json_groups(self, cli: Invoke, seed: Seeder) -> None:
        items = _seed_groups(seed)
        groups = _json(cli(*GROUP_BY, "--json"))
        assert [(group["error_code"], group["count"]) for group in groups] == [
            ("HTTPError", 3),
            ("DeadlockDetected", 2),
            ("UniqueViolation", 1),
            ("UniqueViolation", 1),
        ]
        http = groups[0]
        assert http["fingerprint"] == fingerprint("HTTPError", _http(1) + " #1")
        assert http["plugins"] == ["billing", "mail"]
        assert http["pattern"].startswith("503 Server Error: Service Unavailable for url:")
        assert http["sample_error"] in [_http(n) + " #1" for n in (17, 4242, 9)]
        assert http["first_seen"] <= http["last_seen"]
        assert len({group["fingerprint"] for group in groups}) == 4
        assert sum(group["count"] for group in groups) == sum(map(len, items.values()))
        top = _json(cli(*GROUP_BY, "--json", "--limit", "2"))
        assert [group["count"] for group in top] == [3, 2]

    def test_table_fits_80_columns(
        self, cli: Invoke, seed: Seeder, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _seed_groups(seed)
        monkeypatch.setenv("COLUMNS", "80")
        result = cli(*GROUP_BY)
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert max(len(line) for line in lines) <= 80
        for group in _groups(cli).values():
            row = next(line for line in lines if line.startswith(group["fingerprint"]))
            assert f" {group['count']} " in row
        assert "HTTPError" in result.stdout and "billing" in result.stdout
        assert any(line.startswith("total") and " 7 " in line for line in lines)

    def test_empty(self, cli: Invoke, seed: Seeder) -> None:
        seed.item(RetryStatus.COMPLETED)
        assert _json(cli(*GROUP_BY, "--json")) == []
        assert cli(*GROUP_BY).exit_code == 0


class TestActOnAGroup:
    """replay and purge --fingerprint act on exactly the items the group counts."""

    def test_replay_a_group(self, cli: Invoke, seed: Seeder) -> None:
        items = _seed_groups(seed)
        group = fingerprint("HTTPError", _http(1) + " #1")
        dry = _json(cli("replay", "--fingerprint", group, "--dry-run", "--json"))
        assert dry["count"] == _groups(cli)[group]["count"] == 3
        assert [item["id"] for item in dry["items"]] == items["http"]
        assert {item["error_fingerprint"] for item in dry["items"]} == {group}
        before = seed.statuses()
        done = _json(cli("replay", "--fingerprint", group, "--json"))
        assert done["replayed"] == items["http"]
        after = seed.statuses()
        assert {after[item_id] for item_id in items["http"]} == {"pending"}
        assert {k: v for k, v in after.items() if k not in items["http"]} == {
            k: v for k, v in before.items() if k not in items["http"]
        }
        assert group not in _groups(cli)

    def test_combines_with_filters_and_rate(self, cli: Invoke, seed: Seeder) -> None:
        items = _seed_groups(seed)
        group = fingerprint("HTTPError", _http(1) + " #1")
        time = FakeTime()
        deps = CliDeps(sleep=time.sleep, monotonic=time.monotonic)
        args = ("replay", "--fingerprint", group, "--plugin", "billing", "--rate", "1")
        result = cli(*args, deps=deps)
        assert result.exit_code == 0, result.output
        assert "replayed 2 item(s) at 1/s" in result.stdout
        assert time.sleeps == [1.0]
        assert [seed.statuses()[item_id] for item_id in items["http"]] == [
            "pending",
            "pending",
            "failed",
        ]
        only_failed = ("--fingerprint", group, "--status", "failed", "--dry-run", "--json")
        assert _json(cli("purge", *only_failed))["count"] == 1

    def test_purge_a_group_by_prefix(self, cli: Invoke, seed: Seeder) -> None:
        items = _seed_groups(seed)
        group = fingerprint("UniqueViolation", UNIQUE.format(name="users_email_key", n=1) + " #1")
        declined = cli("purge", "--fingerprint", group[:6], input="n\n")
        assert declined.exit_code == 1
        assert "Delete 1 item(s)" in declined.stderr
        assert seed.count() == 8
        done = _json(cli("purge", "--fingerprint", group[:6].upper(), "--yes", "--json"))
        assert done["purged"] == items["users"]
        assert seed.count() == 7
        assert [
            g["count"] for g in _groups(cli).values() if g["error_code"] == "UniqueViolation"
        ] == [1]

    def test_no_match_is_zero_items(self, cli: Invoke, seed: Seeder) -> None:
        _seed_groups(seed)
        before = seed.statuses()
        unknown = "0123456789abcdef"
        for args in (("replay", "--fingerprint", unknown), ("purge", "--fingerprint", "fedc")):
            result = cli(*args, "--yes")
            assert result.exit_code == 0, result.output
            assert "no item matches the selection: nothing changed" in result.stdout
            assert _json(cli(*args, "--dry-run", "--json"))["count"] == 0
        none = _json(cli("replay", "--fingerprint", "none", "--dry-run", "--json"))
        assert none["count"] == 0  # every failure here has a fingerprint
        assert seed.statuses() == before

    @pytest.mark.parametrize(
        ("value", "problem"),
        [
            ("xyz!", "is not a fingerprint (4 to 16 hexadecimal digits)"),
            ("abc", "is not a fingerprint"),
            ("0123456789abcdef0", "is not a fingerprint"),
            ("", "is not a fingerprint"),
        ],
    )
    def test_malformed_is_one_error(
        self, cli: Invoke, seed: Seeder, value: str, problem: str
    ) -> None:
        seed.item(RetryStatus.DEAD_LETTER, error_code="E")
        for command in ("replay", "purge"):
            result = cli(command, "--fingerprint", value, "--yes")
            assert result.exit_code == 1
            assert result.stdout == ""
            (line,) = result.stderr.splitlines()
            assert line.startswith("error: invalid argument fingerprint:") and problem in line
        assert seed.statuses()  # nothing deleted

    def test_ambiguous_prefix_is_an_error(self, cli: Invoke, seed: Seeder) -> None:
        first, second = _two_messages_sharing_a_prefix()
        for message in (first, second):
            seed.item(RetryStatus.DEAD_LETTER, error_code="E", error=message)
        prefix = fingerprint("E", first + " #1")[:4]  # type: ignore[index]
        result = cli("purge", "--fingerprint", prefix, "--yes")
        assert result.exit_code == 1
        assert "is the start of several fingerprints" in result.stderr
        assert seed.count() == 2
        full = fingerprint("E", first + " #1")
        assert _json(cli("purge", "--fingerprint", str(full), "--yes", "--json"))["purged"]


REJECTED = "tenant {name} rejected the invoice"
RULES = """
from retryqueue.fingerprint import add_rule

def setup():
    add_rule(r"tenant [a-z]+", "tenant <tenant>")
"""


@pytest.fixture
def rules_module(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An application module in the current folder whose ``setup()`` adds one rule (a
    tenant's name is a value); the process's rules and import path are restored after."""
    name = f"app_rules_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(RULES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        yield name
    finally:
        reset_rules()


def _stored(seed: Seeder) -> tuple[dict[int, str | None], list[str | None]]:
    """The items' fingerprints by id, and every history row's."""
    with seed.sessions() as session:
        rows = session.execute(select(RetryItem.id, RetryItem.error_fingerprint)).all()
        history = list(session.scalars(select(RetryHistory.error_fingerprint)))
    return {row.id: row.error_fingerprint for row in rows}, history


class TestRefingerprint:
    """After a rule change, ``refingerprint`` regroups the stored failures."""

    def test_one_failure_is_one_group_again(
        self, cli: Invoke, seed: Seeder, rules_module: str
    ) -> None:
        tenants = [
            seed.item(RetryStatus.DEAD_LETTER, error_code="Rejected", error=REJECTED.format(name=n))
            for n in ("acme", "globex")
        ]
        http = seed.item(RetryStatus.FAILED, error_code="HTTPError", error=_http(5))
        done = seed.item(RetryStatus.COMPLETED)
        before, history_before = _stored(seed)
        assert before[tenants[0]] != before[tenants[1]]  # the built-in rules keep the names

        result = _json(cli("refingerprint", "--rules", f"{rules_module}:setup", "--json"))

        assert result == {"items": 3, "changed": 2}  # the HTTP failure's group did not move
        after, history_after = _stored(seed)
        assert (
            after[tenants[0]]
            == after[tenants[1]]
            == fingerprint("Rejected", REJECTED.format(name="initech") + " #1")
        )
        assert after[http] == before[http] and after[done] is None
        assert history_after == history_before  # the audit trail keeps what was written
        groups = _groups(cli)
        assert groups[str(after[tenants[0]])]["count"] == 2
        again = _json(cli("refingerprint", "--rules", f"{rules_module}:setup", "--json"))
        assert again == {"items": 3, "changed": 0}

    @pytest.mark.parametrize(
        ("spec", "problem"),
        [
            ("no_such_module_here", "cannot import 'no_such_module_here'"),
            ("{module}:missing", "has no function 'missing'"),
            ("{module}:", "expected 'package.module' or 'package.module:function'"),
            ("broken_{module}", "cannot import 'broken_{module}': settings missing"),
            ("broken_setup_{module}:setup", "setup() failed: no tenants"),
        ],
    )
    def test_bad_rules_are_one_line_and_change_nothing(
        self, cli: Invoke, seed: Seeder, rules_module: str, spec: str, problem: str
    ) -> None:
        Path(f"broken_{rules_module}.py").write_text("raise RuntimeError('settings missing')\n")
        Path(f"broken_setup_{rules_module}.py").write_text(
            "def setup():\n    raise ValueError('no tenants\\nsee the settings')\n"
        )
        seed.item(RetryStatus.DEAD_LETTER, error_code="Rejected", error=REJECTED.format(name="a"))
        before = _stored(seed)
        result = cli("refingerprint", "--rules", spec.format(module=rules_module))
        assert result.exit_code == 1 and result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert problem.format(module=rules_module) in line and "Traceback" not in result.stderr
        assert _stored(seed) == before


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
def test_an_item_held_elsewhere_is_left_for_the_next_run(
    seed: Seeder, engine: Engine, rules_module: str
) -> None:
    """A row another transaction holds (a worker recording a failure) is skipped, not
    waited for nor overwritten; the next run regroups it. (SQLite has one writer at a time.)"""
    first, held = (
        seed.item(RetryStatus.DEAD_LETTER, error_code="Rejected", error=REJECTED.format(name=n))
        for n in ("acme", "globex")
    )
    add_rule(r"tenant [a-z]+", "tenant <tenant>")
    queue = RetryQueue()
    with engine.connect() as other:
        other.execute(select(RetryItem.id).where(RetryItem.id == held).with_for_update())
        with seed.sessions.begin() as session:
            assert list(queue.iter_refingerprint(session)) == [(1, 1)]
        other.rollback()
    with seed.sessions.begin() as session:
        assert list(queue.iter_refingerprint(session)) == [(2, 1)]
    after, _ = _stored(seed)
    assert after[first] == after[held]


def _two_messages_sharing_a_prefix() -> tuple[str, str]:
    """Two different failures whose fingerprints start with the same 4 hex digits."""
    seen: dict[str, str] = {}
    for letters in itertools.product("abcdefghijklmnop", repeat=3):
        message = f"failure kind {''.join(letters)}"
        mark = fingerprint("E", message + " #1")
        assert mark is not None
        if mark[:4] in seen:
            return seen[mark[:4]], message
        seen[mark[:4]] = message
    raise AssertionError("no shared prefix among 4,096 fingerprints")  # pragma: no cover
