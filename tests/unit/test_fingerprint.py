"""The error fingerprint: values out, the shape of the message kept."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from retryqueue.errors import InvalidArgument
from retryqueue.fingerprint import (
    FINGERPRINT_LENGTH,
    add_rule,
    fingerprint,
    normalise_message,
    reset_rules,
)


class TestNormalise:
    """Each kind of value becomes its placeholder."""

    @pytest.mark.parametrize(
        ("message", "expected"),
        [
            ("timeout after 30s", "timeout after <n>s"),
            ("retry 3 of 5 took 1.5e3 ms", "retry <n> of <n> took <n> ms"),
            ("item 550e8400-e29b-41d4-a716-446655440000 lost", "item <uuid> lost"),
            ("at 2026-11-29T04:55:01.123Z and 05:01:02", "at <time> and <time>"),
            ("on 2026-11-29", "on <time>"),
            ("connect to 10.0.0.7:5432 failed", "connect to <ip> failed"),
            ("from fe80::1:2:3 dropped", "from <ip> dropped"),
            ("no user 'alice' nor \"bob-2\"", "no user <str> nor <str>"),
            ('constraint "orders_pkey" and `users`', 'constraint "orders_pkey" and `users`'),
            ("for key 'orders.PRIMARY' not 'x'", "for key 'orders.PRIMARY' not <str>"),
            ("'order_id'", "'order_id'"),
            ("Key (id)=(42) exists", "Key (id)=(<v>) exists"),
            ("mail to alice@example.com bounced", "mail to <email> bounced"),
            ("request req_8f14e45fceea167a and 01HGW2N7EJ4Q8X2M", "request <id> and <id>"),
            ("worker host-a-1234-ab12cd", "worker host-a-<n>-<hex>"),
            ("HTTP 503 and status=404 and 500 Internal Server Error", None),
            ("exit code 137, port 5432", "exit code 137, port <n>"),
            ('{"detail": "order 42 not found"}', '{"detail": "order <n> not found"}'),
            ("commit abcdef0123456789 at 0xdeadBEEF", "commit <hex> at <hex>"),
            ("GET /v1/orders/12345/items", "GET /<id>/orders/<id>/items"),
            ("user42 missing", "user<n> missing"),
            ("  many \n  spaces  ", "many spaces"),
            ("connection refused", "connection refused"),
        ],
    )
    def test_placeholders(self, message: str, expected: str | None) -> None:
        assert normalise_message(message) == (message if expected is None else expected)

    def test_empty_and_long(self) -> None:
        assert normalise_message(None) == ""
        assert normalise_message("") == ""
        assert len(normalise_message("x" * 10_000)) == 2000


class TestFingerprint:
    """Same code and shape: same key; otherwise different."""

    def test_groups_by_code_and_shape(self) -> None:
        one = fingerprint("HTTP_503", "timeout after 30s to 10.0.0.1")
        assert one is not None and len(one) == FINGERPRINT_LENGTH
        assert one == fingerprint("HTTP_503", "timeout after 31s to 10.0.0.2")
        assert one != fingerprint("HTTP_504", "timeout after 30s to 10.0.0.1")
        assert one != fingerprint("HTTP_503", "refused by 10.0.0.1")
        assert fingerprint("CODE", None) == fingerprint("CODE", "")
        assert fingerprint(None, None) is None


# Realistic messages: each list is one failure seen several times, its values changing.
SAME_FAILURE = {
    "http 503 with request ids": [
        "503 Server Error: Service Unavailable for url: https://api.example.com/v1/orders/1234"
        " (request id: 0f8fad5b-d9cb-469f-a165-70867728950e)",
        "503 Server Error: Service Unavailable for url: https://api.example.com/v1/orders/98"
        " (request id: 7c9e6679-7425-40de-944b-e07fc1f90ae7)",
    ],
    "http 502 with prefixed request ids": [
        "HTTP 502 Bad Gateway (X-Request-Id: req_8f14e45fceea167a)",
        "HTTP 502 Bad Gateway (X-Request-Id: req_45c48cce2e2d7fbd)",
    ],
    "refused connection to replicas": [
        "connection to 10.0.3.17:5432 refused",
        "connection to 10.0.3.18:5433 refused",
    ],
    "psycopg connection failure": [
        'connection to server at "db-7.internal" (10.0.3.17), port 5432 failed: Connection'
        " refused\n\tIs the server running on that host and accepting TCP/IP connections?",
        'connection to server at "db-9.internal" (10.0.3.19), port 5432 failed: Connection'
        " refused\n\tIs the server running on that host and accepting TCP/IP connections?",
    ],
    "deadlock": [
        "deadlock detected\nDETAIL:  Process 12345 waits for ShareLock on transaction 67890;"
        " blocked by process 23456.",
        "deadlock detected\nDETAIL:  Process 812 waits for ShareLock on transaction 5; blocked"
        " by process 9001.",
    ],
    "timeouts with durations": [
        "timed out after 30.2s",
        "timed out after 29.87s",
    ],
    "requests read timeout": [
        "HTTPSConnectionPool(host='api.example.com', port=443): Read timed out. (read timeout=10)",
        "HTTPSConnectionPool(host='api.example.com', port=443): Read timed out. (read timeout=7.5)",
    ],
    "postgres unique violation, different keys": [
        'duplicate key value violates unique constraint "orders_pkey"\nDETAIL:  Key (id)=(42)'
        " already exists.",
        'duplicate key value violates unique constraint "orders_pkey"\nDETAIL:  Key (id)=(1337)'
        " already exists.",
    ],
    "mysql unique violation, different keys": [
        "(1062, \"Duplicate entry '42' for key 'orders.PRIMARY'\")",
        "(1062, \"Duplicate entry 'A-17' for key 'orders.PRIMARY'\")",
    ],
    "paths with ids and timestamps": [
        "GET /orders/1234/items failed at 2026-11-29T08:30:25Z",
        "GET /orders/77/items failed at 2026-11-30T11:02:59.120+01:00",
    ],
    "hex ids and quoted values": [
        "blob 3f9a2b7c1d4e for customer 'alice' missing",
        "blob 0xdeadbeef for customer 'bob smith' missing",
    ],
}

# Pairs that look alike but are different failures: they must not share a group.
DIFFERENT_FAILURES = [
    ("HTTPError", "HTTP 503 Service Unavailable", "HTTPError", "HTTP 500 Internal Server Error"),
    ("HTTPError", "503 Server Error for url: /a/1", "HTTPError", "404 Client Error for url: /a/1"),
    ("HTTPError", "upstream status=503", "HTTPError", "upstream status=429"),
    (
        "UniqueViolation",
        'duplicate key value violates unique constraint "orders_pkey"',
        "UniqueViolation",
        'duplicate key value violates unique constraint "users_email_key"',
    ),
    (
        "IntegrityError",
        "(1062, \"Duplicate entry '1' for key 'orders.PRIMARY'\")",
        "IntegrityError",
        "(1062, \"Duplicate entry '1' for key 'users.uniq_email'\")",
    ),
    ("KeyError", "'order_id'", "KeyError", "'customer'"),
    ("TIMEOUT", "timed out after 30s", "HTTP_504", "timed out after 30s"),
    ("OSError", "connection to 10.0.0.1 refused", "OSError", "connection to 10.0.0.1 reset"),
    ("Exit", "worker exited with exit code 137", "Exit", "worker exited with exit code 1"),
]


class TestRealisticMessages:
    """The grouping is neither too coarse nor too fine on messages seen in production."""

    @pytest.mark.parametrize("name", sorted(SAME_FAILURE))
    def test_one_failure_one_group(self, name: str) -> None:
        keys = {fingerprint("SomeError", message) for message in SAME_FAILURE[name]}
        assert len(keys) == 1, [normalise_message(m) for m in SAME_FAILURE[name]]

    def test_different_failures_in_the_corpus_stay_apart(self) -> None:
        keys = {name: fingerprint("SomeError", SAME_FAILURE[name][0]) for name in SAME_FAILURE}
        assert len(set(keys.values())) == len(keys)

    @pytest.mark.parametrize(("code_a", "message_a", "code_b", "message_b"), DIFFERENT_FAILURES)
    def test_different_failures_differ(
        self, code_a: str, message_a: str, code_b: str, message_b: str
    ) -> None:
        assert fingerprint(code_a, message_a) != fingerprint(code_b, message_b)


class TestTuning:
    """Rules added by add_rule run first, and their output is kept."""

    @pytest.fixture(autouse=True)
    def _clean_rules(self) -> Iterator[None]:
        reset_rules()
        yield
        reset_rules()

    def test_a_rule_merges(self) -> None:
        one, two = "cache miss on shard-eu1", "cache miss on shard-us2"
        assert fingerprint("E", one) != fingerprint("E", two)
        add_rule(r"shard-\w+", "shard-<s>")
        assert normalise_message(one) == "cache miss on shard-<s>"
        assert fingerprint("E", one) == fingerprint("E", two)

    def test_a_rule_keeps_apart_and_its_output_is_not_normalised(self) -> None:
        one, two = "quota exceeded for tenant 42", "quota exceeded for tenant 7"
        assert fingerprint("E", one) == fingerprint("E", two)
        add_rule(re.compile(r"tenant (\d+)"), lambda match: f"tenant {match.group(1)}")
        assert normalise_message(one) == "quota exceeded for tenant 42"
        assert fingerprint("E", one) != fingerprint("E", two)
        assert normalise_message("tenant 42 at 10.0.0.1") == "tenant 42 at <ip>"

    def test_group_references_and_reset(self) -> None:
        add_rule(r"(user)=\w+", r"\1=<u>")
        assert normalise_message("denied user=alice") == "denied user=<u>"
        reset_rules()
        assert normalise_message("denied user=alice") == "denied user=alice"

    def test_bad_rules_are_refused(self) -> None:
        with pytest.raises(InvalidArgument, match="pattern"):
            add_rule(42, "x")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="replacement"):
            add_rule("x", 42)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="not a regular expression"):
            add_rule("(", "x")
        assert normalise_message("x") == "x"  # nothing was added
