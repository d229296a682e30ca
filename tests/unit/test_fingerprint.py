"""The error fingerprint: values out, the shape of the message kept."""

from __future__ import annotations

import pytest

from retryqueue.fingerprint import FINGERPRINT_LENGTH, fingerprint, normalise_message


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
            ("no user 'alice' nor \"bob\"", "no user <str> nor <str>"),
            ("commit abcdef0123456789 at 0xdeadBEEF", "commit <hex> at <hex>"),
            ("GET /v1/orders/12345/items", "GET /<id>/orders/<id>/items"),
            ("user42 missing", "user<n> missing"),
            ("  many \n  spaces  ", "many spaces"),
            ("connection refused", "connection refused"),
        ],
    )
    def test_placeholders(self, message: str, expected: str) -> None:
        assert normalise_message(message) == expected

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
