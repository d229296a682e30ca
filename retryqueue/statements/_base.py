"""Shared pieces of the statements: tables, time expressions, status predicates."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, TypeAlias, cast

from sqlalchemy import (
    ColumnElement,
    Float,
    Select,
    Table,
    literal,
    literal_column,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from retryqueue.models import (
    RetryHistory,
    RetryItem,
    RetryStatus,
)
from retryqueue.types import UTCDateTime, utc_now

_SYNC_OFF = {"synchronize_session": False}

# A SELECT of any row shape (SQLAlchemy 2.1 types rows as a variadic generic).
AnySelect: TypeAlias = "Select[*tuple[Any, ...]]"

QUEUE_TABLE = cast("Table", RetryItem.__table__)
HISTORY_TABLE = cast("Table", RetryHistory.__table__)

# ---------------------------------------------------------------------------------------
# Time


class _now_plus_seconds(FunctionElement[datetime]):
    """The server's current time plus a number of seconds (a SQL expression)."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(_now_plus_seconds)
def _now_plus_default(element: _now_plus_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    raise NotImplementedError(
        f"the database clock is not supported on {compiler.dialect.name}; use SystemClock"
    )


@compiles(_now_plus_seconds, "postgresql")
def _now_plus_pg(element: _now_plus_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"(now() + make_interval(secs => {seconds}))"


@compiles(_now_plus_seconds, "mysql")
@compiles(_now_plus_seconds, "mariadb")
def _now_plus_mysql(element: _now_plus_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"TIMESTAMPADD(MICROSECOND, ROUND(({seconds}) * 1000000), UTC_TIMESTAMP(6))"


class _stamp_now(FunctionElement[datetime]):
    """The time at which the statement runs, for lock stamps (a SQL expression).

    PostgreSQL's ``now()`` is the transaction's start: a claim that waited behind a lock
    (a partition drop, say) would be born already old. ``clock_timestamp()`` is the time
    the row is written. MySQL/MariaDB's ``UTC_TIMESTAMP(6)`` is the statement's start; the
    lock-stamping UPDATEs run there only after a SELECT ... FOR UPDATE has taken the rows
    (see :mod:`retryqueue.statements.mysql`), so that is after any lock wait.
    """

    type = UTCDateTime()
    inherit_cache = True


@compiles(_stamp_now)
def _stamp_now_default(element: _stamp_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(_stamp_now, "postgresql")
def _stamp_now_pg(element: _stamp_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "clock_timestamp()"


@compiles(_stamp_now, "mysql")
@compiles(_stamp_now, "mariadb")
def _stamp_now_mysql(element: _stamp_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "UTC_TIMESTAMP(6)"


class _stamp_plus_seconds(FunctionElement[datetime]):
    """:class:`_stamp_now` plus a number of seconds (a lock's expiry)."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(_stamp_plus_seconds)
def _stamp_plus_default(element: _stamp_plus_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    if compiler.dialect.name == "default":  # str(statement), for reading
        return f"(CURRENT_TIMESTAMP + {compiler.process(element.clauses, **kw)} seconds)"
    raise NotImplementedError(
        f"the database clock is not supported on {compiler.dialect.name}; use SystemClock"
    )


@compiles(_stamp_plus_seconds, "postgresql")
def _stamp_plus_pg(element: _stamp_plus_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"(clock_timestamp() + make_interval(secs => {seconds}))"


@compiles(_stamp_plus_seconds, "mysql")
@compiles(_stamp_plus_seconds, "mariadb")
def _stamp_plus_mysql(element: _stamp_plus_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"TIMESTAMPADD(MICROSECOND, ROUND(({seconds}) * 1000000), UTC_TIMESTAMP(6))"


def stamp_expr(at: datetime | None) -> ColumnElement[datetime]:
    """A lock stamp: ``at`` as a bound parameter, or the statement's time on the server."""
    if at is None:
        return _stamp_now()
    return literal(at, UTCDateTime())


def stamp_after(at: datetime | None, seconds: float) -> ColumnElement[datetime]:
    """A lock's expiry: ``seconds`` after :func:`stamp_expr`."""
    if at is None:
        return _stamp_plus_seconds(literal(float(seconds), Float()))
    return literal(at + timedelta(seconds=seconds), UTCDateTime())


def _status_is(status: RetryStatus) -> ColumnElement[bool]:
    """``status = 'x'`` with the value inlined, not bound.

    The partial indexes name statuses in their predicates; PostgreSQL can use them for a
    prepared (generic) plan only when the status is a constant in the SQL text.
    """
    return RetryItem.status == literal_column(f"'{status.value}'", RetryItem.status.type)


def _status_in(*statuses: RetryStatus) -> ColumnElement[bool]:
    """``status IN ('x', 'y')`` with the values inlined (see :func:`_status_is`)."""
    return RetryItem.status.in_(
        [literal_column(f"'{status.value}'", RetryItem.status.type) for status in statuses]
    )


def now_expr(at: datetime | None) -> ColumnElement[datetime]:
    """``at`` as a bound parameter, or the server's ``now()`` when ``at`` is None."""
    if at is None:
        return utc_now()
    return literal(at, UTCDateTime())


def after(at: datetime | None, seconds: float) -> ColumnElement[datetime]:
    """The time ``seconds`` after now (negative: before), on the chosen clock."""
    if at is None:
        return _now_plus_seconds(literal(float(seconds), Float()))
    return literal(at + timedelta(seconds=seconds), UTCDateTime())


class _hour_bucket(FunctionElement[datetime]):
    """The start of the UTC hour a timestamp falls in."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(_hour_bucket)
def _hour_bucket_sqlite(element: _hour_bucket, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"strftime('%Y-%m-%d %H:00:00.000000', {column})"


@compiles(_hour_bucket, "postgresql")
def _hour_bucket_pg(element: _hour_bucket, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"date_trunc('hour', ({column}) AT TIME ZONE 'UTC')"


@compiles(_hour_bucket, "mysql")
@compiles(_hour_bucket, "mariadb")
def _hour_bucket_mysql(element: _hour_bucket, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"CAST(DATE_FORMAT({column}, '%%Y-%%m-%%d %%H:00:00') AS DATETIME(6))"


_MYSQL_FAMILY = frozenset({"mysql", "mariadb"})


def has_returning(dialect_name: str) -> bool:
    """Whether the queue's UPDATE/DELETE ... RETURNING statements run as they are (not on
    MySQL/MariaDB: see :mod:`retryqueue.statements.mysql`)."""
    return dialect_name not in _MYSQL_FAMILY


def claimable_now(now: Any) -> list[ColumnElement[bool]]:
    """What a claim may take, before its circuit and limit filters: pending, due (at
    ``now``), unlocked and not expired. In this order: the claim's SQL text is cached."""
    return [
        _status_is(RetryStatus.PENDING),
        RetryItem.next_retry_at <= now,
        RetryItem.locked_by.is_(None),
        RetryItem.expires_at > now,
    ]
