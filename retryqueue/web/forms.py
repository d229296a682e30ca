"""Reading the dashboard's query strings and forms: every value checked, every mistake a
clear :class:`~retryqueue.errors.InvalidArgument` (answered with a 400 page).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

from retryqueue.errors import InvalidArgument
from retryqueue.models import RetryStatus
from retryqueue.results import ITEM_SORTS, ItemQuery

__all__ = [
    "ACTIONS",
    "MAX_IDS",
    "MAX_PAGE_SIZE",
    "encode_cursor",
    "parse_filter_field",
    "parse_id",
    "parse_ids",
    "parse_query",
    "parse_rate",
    "query_params",
    "query_string",
]

MAX_PAGE_SIZE = 500
MAX_IDS = 10_000
MAX_TEXT = 255
ACTIONS = ("replay", "purge")

_TEXT_FILTERS = {
    "event_type": "event_type",
    "plugin": "plugin_name",
    "channel": "channel_name",
    "correlation_id": "correlation_id",
    "tag": "tag",
    "error_code": "error_code",
    "error": "error_text",
    "fingerprint": "fingerprint",
}
_KNOWN = {
    "status",
    "sort",
    "order",
    "limit",
    "after",
    "before",
    "created_after",
    "created_before",
}


def parse_id(value: object, name: str = "id") -> int:
    """A positive item id."""
    text = str(value).strip()
    if not text.isdigit() or len(text) > 18 or int(text) < 1:
        raise InvalidArgument(name, f"{text[:40]!r} is not an item id (a positive integer)")
    return int(text)


def parse_ids(values: list[Any]) -> tuple[int, ...]:
    """Checked item ids (at most :data:`MAX_IDS`), duplicates removed."""
    if len(values) > MAX_IDS:
        raise InvalidArgument("id", f"at most {MAX_IDS} ids at once, got {len(values)}")
    return tuple(sorted({parse_id(value) for value in values}))


def _when(value: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.strip().replace(" ", "T"))
    except ValueError:
        raise InvalidArgument(
            name, f"{value[:40]!r} is not a date or time (use 2026-11-29 or 2026-11-29T05:00)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _text(value: str, name: str) -> str | None:
    value = value.strip()
    if len(value) > MAX_TEXT:
        raise InvalidArgument(name, f"at most {MAX_TEXT} characters")
    return value or None


def _cursor(value: str, sort: str, name: str) -> tuple[Any, int]:
    raw, sep, last = value.rpartition("|")
    if not sep:
        return (None, parse_id(value, name))
    last_id = parse_id(last, name)
    if sort in ("created_at", "next_retry_at"):
        return (_when(raw, name), last_id)
    try:
        return (int(raw), last_id)
    except ValueError:
        raise InvalidArgument(name, f"{raw[:40]!r} is not a cursor of this list") from None


def encode_cursor(after: tuple[Any, int], sort: str) -> str:
    """The ``after`` (or ``before``) parameter of the page following (preceding) a row
    (sort value, id)."""
    value, last_id = after
    if sort == "id":
        return str(last_id)
    shown = value.isoformat() if isinstance(value, datetime) else str(value)
    return f"{shown}|{last_id}"


def parse_query(params: Mapping[str, Any] | list[tuple[str, str]]) -> ItemQuery:
    """An :class:`ItemQuery` from a query string's pairs; unknown values are refused."""
    pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
    statuses: list[RetryStatus] = []
    values: dict[str, Any] = {}
    for key, raw in pairs:
        raw = str(raw)
        if key == "status":
            for part in filter(None, (p.strip() for p in raw.split(","))):
                try:
                    statuses.append(RetryStatus(part))
                except ValueError:
                    choices = ", ".join(status.value for status in RetryStatus)
                    raise InvalidArgument(
                        "status", f"unknown status {part[:40]!r}; expected one of {choices}"
                    ) from None
        elif key in _TEXT_FILTERS:
            values[_TEXT_FILTERS[key]] = _text(raw, key)
        elif key in ("created_after", "created_before") and raw.strip():
            values[key] = _when(raw, key)
        elif key in _KNOWN:
            values[key] = raw.strip()
    sort = values.pop("sort", "") or "id"
    if sort not in ITEM_SORTS:
        raise InvalidArgument(
            "sort", f"unknown sort {sort[:40]!r}; expected {', '.join(ITEM_SORTS)}"
        )
    order = values.pop("order", "") or "desc"
    if order not in ("asc", "desc"):
        raise InvalidArgument("order", "expected asc or desc")
    limit_text = values.pop("limit", "") or "50"
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_PAGE_SIZE:
        raise InvalidArgument("limit", f"expected a page size from 1 to {MAX_PAGE_SIZE}")
    after_text = values.pop("after", "")
    before_text = values.pop("before", "")
    if after_text and before_text:
        raise InvalidArgument("before", "a page is either after a row or before one, not both")
    after = _cursor(after_text, sort, "after") if after_text else None
    before = _cursor(before_text, sort, "before") if before_text else None
    filters: dict[str, Any] = {k: v for k, v in values.items() if not isinstance(v, str) or v}
    return ItemQuery(
        statuses=tuple(dict.fromkeys(statuses)),
        sort=sort,
        descending=order == "desc",
        limit=int(limit_text),
        after=after,
        before=before,
        **filters,
    )


def query_params(query: ItemQuery, *, cursor: bool = False) -> list[tuple[str, str]]:
    """The query string pairs that give ``query`` back (without its cursor unless asked)."""
    pairs: list[tuple[str, str]] = [("status", status.value) for status in query.statuses]
    for key, attribute in _TEXT_FILTERS.items():
        value = getattr(query, attribute)
        if value is not None:
            pairs.append((key, value))
    for key in ("created_after", "created_before"):
        moment = getattr(query, key)
        if moment is not None:
            pairs.append((key, moment.isoformat()))
    if query.sort != "id":
        pairs.append(("sort", query.sort))
    if not query.descending:
        pairs.append(("order", "asc"))
    if query.limit != 50:
        pairs.append(("limit", str(query.limit)))
    if cursor and query.after is not None:
        pairs.append(("after", encode_cursor(query.after, query.sort)))
    if cursor and query.before is not None:
        pairs.append(("before", encode_cursor(query.before, query.sort)))
    return pairs


def query_string(query: ItemQuery, **changes: str | None) -> str:
    """``query``'s query string with some parameters replaced (None: dropped)."""
    pairs = [(k, v) for k, v in query_params(query) if k not in changes]
    pairs.extend((k, v) for k, v in changes.items() if v is not None)
    return urlencode(pairs)


def parse_filter_field(value: object) -> ItemQuery:
    """An ItemQuery from a form's hidden ``filter`` field (a query string)."""
    if not isinstance(value, str) or len(value) > 4096:
        raise InvalidArgument("filter", "expected a query string of at most 4096 characters")
    return parse_query(parse_qsl(value, keep_blank_values=True))


def parse_rate(value: object, default: float) -> float:
    """Items per second of a paced action: from 0.1 to 1,000."""
    text = str(value).strip() if value is not None else ""
    if not text:
        return default
    try:
        rate = float(text)
    except ValueError:
        raise InvalidArgument("rate", f"{text[:40]!r} is not a number") from None
    if not 0.1 <= rate <= 1000:
        raise InvalidArgument("rate", "expected 0.1 to 1000 items per second")
    return rate
