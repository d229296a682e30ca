"""Input checks, the clock and the UTC datetime type, without a database."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from retryqueue import InvalidArgument, ManualClock, RetryQueueError
from retryqueue import validation as check
from retryqueue.errors import database_error
from retryqueue.types import UTCDateTime


class TestChecks:
    """Each check names the field and what was wrong."""

    def test_errors_belong_to_the_family(self) -> None:
        with pytest.raises(RetryQueueError) as caught:
            check.bounded_int("priority", 0, low=1, high=10)
        assert isinstance(caught.value, InvalidArgument)
        assert isinstance(caught.value, ValueError)
        assert caught.value.field == "priority"
        assert str(caught.value) == "priority: must be between 1 and 10, got 0"

    @pytest.mark.parametrize("value", [1, 1.5, Decimal("9.99"), 2])
    def test_multiplier_accepts_what_fits_numeric_3_2(self, value: float | Decimal) -> None:
        assert check.multiplier("m", value) == float(value)

    @pytest.mark.parametrize("value", ["2.5", 0.99, 10, 1.005, float("inf")])
    def test_multiplier_refuses_the_rest(self, value: object) -> None:
        with pytest.raises(InvalidArgument, match=r"^m: "):
            check.multiplier("m", value)

    def test_seconds_accepts_timedelta(self) -> None:
        assert check.seconds("delay", timedelta(minutes=2)) == 120

    def test_json_size_counts_utf8_bytes(self) -> None:
        check.json_document("d", {"s": "é" * 10}, max_bytes=40)
        with pytest.raises(InvalidArgument, match="larger than"):
            check.json_document("d", {"s": "é" * 20}, max_bytes=40)

    def test_json_accepts_tuples_and_unicode(self) -> None:
        assert check.json_document("d", {"t": (1, 2), "emoji": "🎉"}) == {
            "t": (1, 2),
            "emoji": "🎉",
        }

    def test_statuses(self) -> None:
        assert [s.value for s in check.status_list("s", ["pending", "dead_letter"])] == [
            "pending",
            "dead_letter",
        ]
        with pytest.raises(InvalidArgument, match="unknown status 'done'"):
            check.status_list("s", ["done"])


class TestManualClock:
    """The test clock moves only when told to."""

    def test_advance_and_set(self) -> None:
        clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
        assert clock.advance(90) == datetime(2026, 1, 1, 0, 1, 30, tzinfo=UTC)
        assert clock.advance(timedelta(hours=1)).hour == 1
        plus_two = timezone(timedelta(hours=2))
        assert clock.set(datetime(2026, 6, 1, 12, tzinfo=plus_two)) == datetime(
            2026, 6, 1, 10, tzinfo=UTC
        )

    def test_naive_start_is_refused(self) -> None:
        with pytest.raises(InvalidArgument, match="naive"):
            ManualClock(datetime(2026, 1, 1))


class TestUTCDateTime:
    """Aware in, aware UTC out; naive values never reach the database."""

    def test_sqlite_stores_naive_utc(self) -> None:
        kind = UTCDateTime()
        value = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=3)))
        stored = kind.process_bind_param(value, sqlite.dialect())
        assert stored == datetime(2026, 1, 1, 9)
        assert kind.process_result_value(stored, sqlite.dialect()) == value

    def test_postgresql_keeps_aware(self) -> None:
        value = datetime(2026, 1, 1, 12, tzinfo=UTC)
        assert UTCDateTime().process_bind_param(value, postgresql.dialect()) == value

    def test_naive_is_refused(self) -> None:
        with pytest.raises(ValueError, match="naive"):
            UTCDateTime().process_bind_param(datetime(2026, 1, 1), postgresql.dialect())


class TestDatabaseErrors:
    """Database errors become one line without SQL or parameters."""

    def test_first_line_of_the_driver_message(self) -> None:
        class DriverError(Exception):
            pass

        class Wrapped(Exception):
            orig = DriverError("connection refused\nDETAIL: secret stuff")

        error = database_error("acquire", Wrapped("SELECT ... params"))
        assert str(error) == "acquire failed: connection refused"


class TestJsonSize:
    """json_document encodes a document only when a cheap upper bound says it might be
    over the limit: the bound must never be under the real size, or an oversized payload
    would get through."""

    @staticmethod
    def document(rng: random.Random, depth: int = 0) -> object:
        chars = [34, 92, 65, 233, 0x1F600, 0x2028, 127, 9]
        if depth > 4 or rng.random() < 0.3:
            return rng.choice(
                [
                    None,
                    True,
                    False,
                    rng.randint(-(10**30), 10**30),
                    rng.random() * 1e300,
                    -0.0,
                    "".join(chr(rng.choice(chars)) for _ in range(rng.randint(0, 20))),
                ]
            )
        if rng.random() < 0.5:
            return {
                "".join(chr(rng.choice(chars)) for _ in range(rng.randint(0, 5))): (
                    TestJsonSize.document(rng, depth + 1)
                )
                for _ in range(rng.randint(0, 5))
            }
        return [TestJsonSize.document(rng, depth + 1) for _ in range(rng.randint(0, 5))]

    def test_the_exact_limit_holds_for_random_documents(self) -> None:
        rng = random.Random(15)
        for _ in range(3000):
            doc = {"d": self.document(rng)}  # (a top-level None means "missing")
            size = len(json.dumps(doc, ensure_ascii=False, allow_nan=False).encode("utf-8"))
            assert check.json_document("f", doc, max_bytes=size) is doc  # at the limit: ok
            if size > 1:
                with pytest.raises(InvalidArgument, match="bytes as JSON"):
                    check.json_document("f", doc, max_bytes=size - 1)

    def test_an_integer_too_large_to_write_is_a_clear_error(self) -> None:
        with pytest.raises(InvalidArgument, match="integer too large"):
            check.json_document("event_data", {"n": 10**5000})
