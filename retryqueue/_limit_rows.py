"""The rate limits' rows (``daz_retry_limits``): locked (created if missing), read back and
written, refilled as token buckets, and the key filters a claim runs with. Private to
:mod:`retryqueue.limits`, split out to keep that module about limits, pauses and claims.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from retryqueue import statements as sql
from retryqueue.errors import database_error
from retryqueue.monitoring import fetch_all
from retryqueue.statements import KeyFilter

__all__ = [
    "execute",
    "existing",
    "locked_row",
    "only",
    "paused_at",
    "refilled",
    "skipping",
    "waiting",
]


# -- rows ---------------------------------------------------------------------------------


def locked_row(session: Session, at: datetime | None, key: str) -> Any:
    """``key``'s row locked FOR UPDATE, created (empty) if missing."""
    execute(
        session,
        sql.insert_limits(session.get_bind().dialect.name, at).values(limit_key=key),
        "rate limits",
    )
    (row,) = fetch_all(session, sql.limits_by_key(at, [key], lock=True), "rate limits")
    return row


def existing(session: Session, at: datetime | None, key: str) -> Any:
    """``key``'s row locked FOR UPDATE, or None if it has none (nothing is created)."""
    rows = fetch_all(session, sql.limits_by_key(at, [key], lock=True), "rate limits")
    return rows[0] if rows else None


def execute(session: Session, stmt: Any, operation: str) -> Any:
    """Run ``stmt``; a database error becomes the library's, naming ``operation``."""
    try:
        return session.execute(stmt)
    except SQLAlchemyError as exc:
        raise database_error(operation, exc) from exc


def waiting(session: Session, at: datetime | None, keys: Sequence[str]) -> set[str]:
    """Which of ``keys`` have a due item no claim has taken."""
    plugins, pairs = sorted(_plugins(set(keys))), sorted(_pairs(set(keys)))
    found: set[str] = set()
    for row in fetch_all(session, sql.waiting_keys(at, plugins, pairs), "rate limits"):
        if row.plugin_name in plugins:
            found.add(row.plugin_name)
        if row.pair in pairs:
            found.add(row.pair)
    return found


def paused_at(row: Any, now: datetime) -> bool:
    """Whether the row's key is paused at ``now``."""
    return row.paused_until is not None and row.paused_until > now


def refilled(row: Any) -> float:
    """The bucket's tokens at ``row.now``: refilled at the rate since it was last written,
    at most ``burst``. A new bucket (never written) is full."""
    burst = float(row.burst)
    if row.refilled_at is None:
        return burst
    elapsed = max(0.0, (row.now - row.refilled_at).total_seconds())
    return float(min(burst, float(row.tokens) + elapsed * float(row.rate_per_second)))


# -- the claim's key filters --------------------------------------------------------------


def only(key: str, paused: set[str], held: set[str]) -> KeyFilter:
    """The filter claiming one limited key's items: a plugin key's items except those of
    its pairs with a limit or pause of their own; a pair key's items unless their plugin
    is paused."""
    if ":" in key:
        return KeyFilter(only_pair=key, skip_plugins=tuple(sorted(_plugins(paused))))
    return KeyFilter(only_plugin=key, skip_pairs=tuple(sorted(_pairs(held))))


def skipping(held: set[str]) -> KeyFilter:
    """The filter claiming every item except those of the keys ``held``."""
    return KeyFilter(
        skip_plugins=tuple(sorted(_plugins(held))), skip_pairs=tuple(sorted(_pairs(held)))
    )


def _plugins(keys: set[str]) -> set[str]:
    return {key for key in keys if ":" not in key}


def _pairs(keys: set[str]) -> set[str]:
    return {key for key in keys if ":" in key}
