"""Checks on caller input, run before anything is written. Pure Python, no database.

Each check raises :class:`~retryqueue.errors.InvalidArgument` naming the field and saying
what was wrong.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from retryqueue.encryption import MARKER
from retryqueue.errors import InvalidArgument
from retryqueue.fingerprint import FINGERPRINT_LENGTH
from retryqueue.models import RetryStatus
from retryqueue.policy import MAX_DELAY_SECONDS
from retryqueue.results import ItemFilter

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_SECONDS",
    "aware",
    "bounded_int",
    "fingerprint_value",
    "flag",
    "item_filter",
    "json_document",
    "multiplier",
    "not_reserved",
    "optional_duration_ms",
    "optional_text",
    "seconds",
    "status_list",
    "tag_list",
    "text",
    "uuid_value",
]

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 31
"""Deepest nesting accepted: MariaDB's JSON_VALID (the column's CHECK) refuses 32 levels."""
_INT32_MAX = 2**31 - 1
_HEX = "0123456789abcdef"
MAX_SECONDS = MAX_DELAY_SECONDS
"""The longest duration any argument may give: 10 years, the cap of the backoff delay.

Every duration (delay, ttl, retry_after, lock_timeout, cleanup ages, ...) must fit in a
timestamp on every backend once added to "now"; longer values are refused."""


def text(field: str, value: object, *, max_length: int = 255) -> str:
    """A non-empty string of at most ``max_length`` characters, storable as UTF-8."""
    if not isinstance(value, str):
        raise InvalidArgument(field, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidArgument(field, "must not be empty")
    if len(value) > max_length:
        raise InvalidArgument(field, f"is {len(value)} characters long, the limit is {max_length}")
    _storable(field, value)
    return value


def optional_text(field: str, value: object, *, max_length: int = 255) -> str | None:
    """Like :func:`text`, but ``None`` is allowed."""
    return None if value is None else text(field, value, max_length=max_length)


def _storable(field: str, value: str) -> None:
    if "\x00" in value:
        raise InvalidArgument(field, "contains a NUL character, which PostgreSQL cannot store")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(field, "is not valid Unicode (lone surrogate?)") from exc


def bounded_int(field: str, value: object, *, low: int, high: int = _INT32_MAX) -> int:
    """An int (not a bool) in ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(field, f"expected an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be between {low} and {high}, got {value}")
    return value


def seconds(
    field: str, value: object, *, allow_zero: bool = True, maximum: float = MAX_SECONDS
) -> float:
    """A finite, non-negative number of seconds, at most ``maximum`` (default 10 years).

    A timedelta is accepted too. ``maximum`` is in the same unit as ``value`` (pass a
    number of days for an argument given in days).
    """
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise InvalidArgument(field, f"expected seconds as a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # a huge int or Decimal
        raise InvalidArgument(field, f"must be at most {maximum:g}, got {value}") from None
    if not math.isfinite(number):
        raise InvalidArgument(field, f"must be finite, got {value}")
    if number < 0 or (number == 0 and not allow_zero):
        raise InvalidArgument(field, f"must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    if number > maximum:
        raise InvalidArgument(field, f"must be at most {maximum:g}, got {value}")
    return number


def flag(field: str, value: object) -> bool:
    """A real bool (``"no"`` or ``0`` are refused, not guessed at)."""
    if not isinstance(value, bool):
        raise InvalidArgument(field, f"expected True or False, got {type(value).__name__}")
    return value


def optional_duration_ms(field: str, value: object) -> int | None:
    """A run's duration in whole milliseconds (0..2**31-1), or None."""
    return None if value is None else bounded_int(field, value, low=0)


def not_reserved(field: str, value: Any) -> Any:
    """A JSON document that cannot be mistaken for a sealed (encrypted) one.

    An object whose only key is the library's encryption marker is refused: it would be
    read back as ciphertext.
    """
    if isinstance(value, Mapping) and set(value) == {MARKER}:
        raise InvalidArgument(
            field, f"an object whose only key is {MARKER!r} is reserved for encrypted values"
        )
    return value


def multiplier(field: str, value: object) -> float:
    """A backoff multiplier that fits NUMERIC(3,2) exactly: 1.00 to 9.99, two decimals."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise InvalidArgument(field, f"expected a number, got {type(value).__name__}")
    number = Decimal(str(value))
    if not number.is_finite() or not Decimal("1") <= number <= Decimal("9.99"):
        raise InvalidArgument(field, f"must be between 1.00 and 9.99 (NUMERIC(3,2)), got {value}")
    if number != number.quantize(Decimal("0.01")):
        raise InvalidArgument(field, f"has more than two decimal places: {value}")
    return float(number)


def aware(field: str, value: object) -> datetime:
    """A timezone-aware datetime."""
    if not isinstance(value, datetime):
        raise InvalidArgument(field, f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument(field, "is a naive datetime; pass a timezone-aware one")
    return value


def uuid_value(field: str, value: object) -> uuid.UUID:
    """A UUID, given as :class:`uuid.UUID` or as its string form."""
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError as exc:
            raise InvalidArgument(field, f"is not a UUID: {value!r}") from exc
    raise InvalidArgument(field, f"expected a UUID, got {type(value).__name__}")


def tag_list(field: str, value: object) -> list[str] | None:
    """A list of non-empty tag strings (or None)."""
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidArgument(field, "expected a list of strings")
    tags = [text(f"{field}[{index}]", tag) for index, tag in enumerate(value)]
    if len(tags) > 100:
        raise InvalidArgument(field, f"has {len(tags)} tags, the limit is 100")
    return tags


def status_list(field: str, values: Iterable[object]) -> list[RetryStatus]:
    """Status names or members, checked against :class:`RetryStatus`."""
    result = []
    for value in values:
        try:
            result.append(RetryStatus(str(value)))
        except ValueError as exc:
            names = ", ".join(status.value for status in RetryStatus)
            raise InvalidArgument(field, f"unknown status {value!r}; expected {names}") from exc
    return result


def item_filter(value: object) -> ItemFilter:
    """An :class:`ItemFilter` whose statuses, ids, times and limit are all valid."""
    if not isinstance(value, ItemFilter):
        raise InvalidArgument("selection", f"expected an ItemFilter, got {type(value).__name__}")
    status_list("statuses", value.statuses)
    if value.ids is not None:
        for item_id in value.ids:
            bounded_int("ids", item_id, low=1, high=2**63 - 1)
    for name in ("created_after", "created_before", "failed_after", "failed_before"):
        moment = getattr(value, name)
        if moment is not None:
            aware(name, moment)
    for name in ("event_type", "plugin_name", "channel_name"):
        optional_text(name, getattr(value, name))
    optional_text("error_code", value.error_code, max_length=50)
    if value.fingerprint is not None and value.fingerprint != "none":
        folded = fingerprint_value("fingerprint", value.fingerprint)
        if folded != value.fingerprint:
            value = dataclasses.replace(value, fingerprint=folded)
    if value.limit is not None:
        bounded_int("limit", value.limit, low=1)
    return value


def fingerprint_value(field: str, value: object, *, prefix: bool = False) -> str:
    """A fingerprint as stored (16 lower-case hex digits), case folded; with ``prefix``,
    its first 4 to 16 digits."""
    if not isinstance(value, str):
        raise InvalidArgument(field, f"expected a string, got {type(value).__name__}")
    folded = value.strip().lower()
    low = 4 if prefix else FINGERPRINT_LENGTH
    if not low <= len(folded) <= FINGERPRINT_LENGTH or folded.strip(_HEX):
        wanted = f"{low} to {FINGERPRINT_LENGTH}" if prefix else f"{FINGERPRINT_LENGTH}"
        raise InvalidArgument(
            field, f"{value[:40]!r} is not a fingerprint ({wanted} hexadecimal digits)"
        )
    return folded


def json_document(
    field: str,
    value: object,
    *,
    nullable: bool = False,
    max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
) -> Any:
    """A JSON-serialisable value that every backend stores and returns unchanged.

    Refused: non-JSON types, NaN/Infinity, non-string keys, NUL characters and lone
    surrogates (PostgreSQL's JSONB cannot hold them), nesting deeper than 31 levels (what
    MariaDB accepts), and
    documents larger than ``max_bytes`` once encoded as UTF-8.
    """
    if value is None:
        if nullable:
            return None
        raise InvalidArgument(field, "is required (got None)")
    # The walk bounds the encoded size from above; only a document that might exceed the
    # limit is encoded to measure it (the common small one is encoded once, when stored).
    if _check_json(field, value, depth=0) > max_bytes:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
        if len(encoded) > max_bytes:
            raise InvalidArgument(
                field, f"is {len(encoded)} bytes as JSON, larger than the limit of {max_bytes}"
            )
    return value


_MAX_INT_BITS = 13_000  # ~3,900 digits: under Python's limit for int-to-text conversion
_ESCAPED = 6  # the most UTF-8 bytes one character takes in JSON text (a \u00XX escape)


def _check_json(field: str, value: object, *, depth: int) -> int:
    """Check one JSON value; an upper bound of its UTF-8 size as ``json.dumps`` writes it."""
    if depth > MAX_JSON_DEPTH:
        raise InvalidArgument(field, f"is nested deeper than {MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return 5
    if isinstance(value, int):
        bits = value.bit_length()
        if bits > _MAX_INT_BITS:  # Python will not even write it out as digits
            raise InvalidArgument(field, "contains an integer too large for JSON")
        return bits * 10 // 33 + 2  # digits <= bits * log10(2) + 1, and a sign
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(field, f"contains {value}, which JSON cannot represent")
        return len(repr(value))
    if isinstance(value, str):
        _storable(field, value)
        return _ESCAPED * len(value) + 2
    if isinstance(value, Mapping):
        size = 2
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgument(field, f"has a non-string key {key!r}")
            _storable(field, key)
            size += _ESCAPED * len(key) + 6 + _check_json(field, item, depth=depth + 1)
        return size
    if isinstance(value, list | tuple):
        size = 2
        for item in value:
            size += 2 + _check_json(field, item, depth=depth + 1)
        return size
    raise InvalidArgument(field, f"contains a {type(value).__name__}, which is not JSON")
