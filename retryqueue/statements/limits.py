"""Rate limits and pauses per key (see retryqueue.limits): one row per key in
``daz_retry_limits``, read and locked by the claim when any row exists."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Insert,
    Select,
    Table,
    Update,
    and_,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite

from retryqueue.models import RetryItem, RetryLimit
from retryqueue.statements._base import (
    _SYNC_OFF,
    AnySelect,
    claimable_now,
    now_expr,
    stamp_expr,
)

LIMIT_COLUMNS = (
    RetryLimit.limit_key,
    RetryLimit.rate_per_second,
    RetryLimit.burst,
    RetryLimit.tokens,
    RetryLimit.refilled_at,
    RetryLimit.paused_until,
    RetryLimit.pause_reason,
    RetryLimit.throttled_claims,
    RetryLimit.updated_at,
)


@dataclass(frozen=True, slots=True)
class KeyFilter:
    """Which items a claim may take, by limit key.

    A key with a ``:`` is ``plugin_name:event_type`` (a *pair*), matched against the item's
    plugin and event type; any other key is a plugin_name. ``only_plugin``/``only_pair``
    restrict the claim to one key's items; ``skip_plugins``/``skip_pairs`` leave those
    keys' items alone (items without a plugin are never skipped).
    """

    only_plugin: str | None = None
    only_pair: str | None = None
    skip_plugins: tuple[str, ...] = ()
    skip_pairs: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[bool, bool, bool, bool]:
        """Which parts are set: the cached claim statement depends on this only."""
        return (
            self.only_plugin is not None,
            self.only_pair is not None,
            bool(self.skip_plugins),
            bool(self.skip_pairs),
        )

    def params(self) -> dict[str, Any]:
        """The bind parameters of :func:`key_filter` built with bind parameters."""
        values: dict[str, Any] = {}
        if self.only_plugin is not None:
            values["limit_only_plugin"] = self.only_plugin
        if self.only_pair is not None:
            values["limit_only_pair"] = self.only_pair
        if self.skip_plugins:
            values["limit_skip_plugins"] = list(self.skip_plugins)
        if self.skip_pairs:
            values["limit_skip_pairs"] = list(self.skip_pairs)
        return values


def item_pair() -> ColumnElement[str | None]:
    """An item's ``plugin_name:event_type`` (NULL without a plugin)."""
    return RetryItem.plugin_name + literal_column("':'") + RetryItem.event_type


def key_filter(
    only_plugin: Any = None, only_pair: Any = None, skip_plugins: Any = None, skip_pairs: Any = None
) -> list[ColumnElement[bool]]:
    """The claim's limit predicate (values or bind parameters; None: that part is absent)."""
    clauses: list[ColumnElement[bool]] = []
    if only_plugin is not None:
        clauses.append(RetryItem.plugin_name == only_plugin)
    if only_pair is not None:
        clauses.append(item_pair() == only_pair)
    skips: list[ColumnElement[bool]] = []
    if skip_plugins is not None:
        skips.append(RetryItem.plugin_name.not_in(skip_plugins))
    if skip_pairs is not None:
        skips.append(item_pair().not_in(skip_pairs))
    if skips:
        clauses.append(or_(RetryItem.plugin_name.is_(None), and_(*skips)))
    return clauses


def skipped_keys(limit_filter: KeyFilter | None) -> list[ColumnElement[bool]]:
    """The predicate leaving out the items ``limit_filter`` skips (paused keys), with
    values, not bind parameters; no predicate without a filter."""
    if limit_filter is None:
        return []
    return key_filter(
        skip_plugins=list(limit_filter.skip_plugins) or None,
        skip_pairs=list(limit_filter.skip_pairs) or None,
    )


def _in_force(at: datetime | None) -> ColumnElement[bool]:
    """A row that limits something now: a rate limit, or a pause not yet ended."""
    return or_(RetryLimit.rate_per_second.is_not(None), RetryLimit.paused_until > now_expr(at))


def any_limit(at: datetime | None) -> Select[str]:
    """One key, if any rate limit or pause is in force (the claim's cheap check)."""
    return select(RetryLimit.limit_key).where(_in_force(at)).limit(1)


def limits_in_force(at: datetime | None) -> AnySelect:
    """The rows in force, by key, with "now" (the statement's time on the server clock)."""
    return (
        select(*LIMIT_COLUMNS, stamp_expr(at).label("now"))
        .where(_in_force(at))
        .order_by(RetryLimit.limit_key)
    )


def all_limits(at: datetime | None) -> AnySelect:
    """Every row, by key, with "now" (the statement's time on the server clock)."""
    return select(*LIMIT_COLUMNS, stamp_expr(at).label("now")).order_by(RetryLimit.limit_key)


def limits_by_key(
    at: datetime | None, keys: Sequence[str], *, lock: bool, skip_locked: bool = False
) -> AnySelect:
    """These keys' rows (key order) with now; ``lock``: FOR UPDATE (``skip_locked``: rows
    another transaction holds are left out, not waited for)."""
    stmt = (
        select(*LIMIT_COLUMNS, stamp_expr(at).label("now"))
        .where(RetryLimit.limit_key.in_(list(keys)))
        .order_by(RetryLimit.limit_key)
    )
    return stmt.with_for_update(skip_locked=skip_locked) if lock else stmt


def insert_limits(dialect_name: str, at: datetime | None) -> Insert:
    """INSERT of empty rows (executemany of ``limit_key``), skipping existing keys."""
    table = cast("Table", RetryLimit.__table__)
    stmt: Any
    if dialect_name == "postgresql":
        stmt = postgresql.insert(table).on_conflict_do_nothing(index_elements=["limit_key"])
    elif dialect_name == "sqlite":
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=["limit_key"])
    else:
        stmt = mysql.insert(table).on_duplicate_key_update(limit_key=table.c.limit_key)
    result: Insert = stmt.values(updated_at=now_expr(at))
    return result


def update_limit(at: datetime | None, key: str, values: dict[str, Any]) -> Update:
    """Write a (locked) row's new values."""
    return (
        update(RetryLimit)
        .where(RetryLimit.limit_key == key)
        .values(**values, updated_at=now_expr(at))
        .execution_options(**_SYNC_OFF)
    )


def waiting_keys(at: datetime | None, plugins: Sequence[str], pairs: Sequence[str]) -> AnySelect:
    """Which of these keys have an item a claim could take now: (plugin_name, pair) rows.

    A key whose bucket is empty was *throttled* only if it had something to claim.
    """
    now = now_expr(at)
    matches: list[ColumnElement[bool]] = []
    if plugins:
        matches.append(RetryItem.plugin_name.in_(list(plugins)))
    if pairs:
        matches.append(item_pair().in_(list(pairs)))
    return (
        select(RetryItem.plugin_name, item_pair().label("pair"))
        .where(
            *claimable_now(now),
            or_(*matches),
        )
        .distinct()
    )
