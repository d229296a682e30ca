"""Portable column types and server defaults.

PostgreSQL gets the reference schema's exact types (TIMESTAMPTZ, JSONB, TEXT[], UUID);
SQLite (and later MySQL) get the nearest portable type. Datetimes are timezone-aware UTC
on every backend and round-trip exactly (microseconds included).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, Text
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator, TypeEngine

from retryqueue import encryption

__all__ = [
    "JsonDocument",
    "SealedJSON",
    "SealedText",
    "TagList",
    "UTCDateTime",
    "random_uuid",
    "utc_now",
    "utc_now_plus_days",
]

_NAIVE_STORAGE = frozenset({"sqlite", "mysql", "mariadb"})


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL stores TIMESTAMPTZ. Backends without a zone-aware type store naive UTC
    (SQLite as ISO text with microseconds, MySQL as DATETIME(6)); values read back are
    always aware and in UTC. Naive datetimes are refused: their meaning is a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        if dialect.name == "sqlite":
            return dialect.type_descriptor(DateTime())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware datetime")
        value = value.astimezone(UTC)
        if dialect.name in _NAIVE_STORAGE:
            return value.replace(tzinfo=None)
        return value

    def process_result_value(
        self, value: datetime | str | None, dialect: Dialect
    ) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            # MySQL returns a bare bound parameter (SELECT %s AS now) as text.
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def JsonDocument() -> TypeEngine[Any]:
    """JSONB on PostgreSQL, JSON elsewhere; Python ``None`` is stored as SQL NULL."""
    return JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


class SealedJSON(TypeDecorator[Any]):
    """A JSON document (JSONB on PostgreSQL), encrypted at rest when keys are configured.

    See :mod:`retryqueue.encryption`. Without keys it is plain JSON; values written under
    a key are read back only with that key.
    """

    impl = JSON(none_as_null=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.JSONB(none_as_null=True))
        return dialect.type_descriptor(JSON(none_as_null=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if isinstance(value, encryption.Undecryptable):
            return value.stored  # written back exactly as it was read
        ring = encryption.active()
        if value is None or ring is None:
            return value
        return ring.seal_json(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return encryption.open_json(value)


class SealedText(TypeDecorator[str]):
    """TEXT, encrypted at rest when keys are configured (see :mod:`retryqueue.encryption`)."""

    impl = Text()
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if isinstance(value, encryption.Undecryptable):
            return str(value.stored)  # written back exactly as it was read
        if value is None:
            return None
        ring = encryption.active()
        if ring is None:
            return encryption.escape_text(value)
        return ring.seal_text(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return encryption.open_text(value)


def TagList() -> TypeEngine[Any]:
    """TEXT[] on PostgreSQL (GIN-indexable), a JSON array elsewhere."""
    return JSON(none_as_null=True).with_variant(postgresql.ARRAY(Text()), "postgresql")


class utc_now(FunctionElement[datetime]):
    """The database's current time, as a server default."""

    type = UTCDateTime()
    inherit_cache = True


class utc_now_plus_days(FunctionElement[datetime]):
    """The database's current time plus a whole number of days, as a server default."""

    type = UTCDateTime()
    inherit_cache = True

    def __init__(self, days: int) -> None:
        self.days = int(days)
        super().__init__()


class random_uuid(FunctionElement[Any]):
    """A random UUID generated by the database, as a server default."""

    inherit_cache = True


@compiles(utc_now)
def _utc_now_default(element: utc_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


@compiles(utc_now, "postgresql")
def _utc_now_pg(element: utc_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "now()"


@compiles(utc_now, "mysql")
@compiles(utc_now, "mariadb")
def _utc_now_mysql(element: utc_now, compiler: SQLCompiler, **kw: Any) -> str:
    # Not NOW()/CURRENT_TIMESTAMP: those follow the session time zone; DATETIME(6) holds UTC.
    # Parenthesised so that it is also valid as a column DEFAULT expression.
    return "(UTC_TIMESTAMP(6))"


@compiles(utc_now_plus_days)
def _plus_days_default(element: utc_now_plus_days, compiler: SQLCompiler, **kw: Any) -> str:
    return f"(datetime('now', '+{element.days} days'))"


@compiles(utc_now_plus_days, "postgresql")
def _plus_days_pg(element: utc_now_plus_days, compiler: SQLCompiler, **kw: Any) -> str:
    return f"(now() + interval '{element.days} days')"


@compiles(utc_now_plus_days, "mysql")
@compiles(utc_now_plus_days, "mariadb")
def _plus_days_mysql(element: utc_now_plus_days, compiler: SQLCompiler, **kw: Any) -> str:
    return f"(UTC_TIMESTAMP(6) + INTERVAL {element.days} DAY)"


@compiles(random_uuid)
def _random_uuid_default(element: random_uuid, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLAlchemy's Uuid stores 32 hex digits on backends without a native UUID type.
    return "(lower(hex(randomblob(16))))"


@compiles(random_uuid, "postgresql")
def _random_uuid_pg(element: random_uuid, compiler: SQLCompiler, **kw: Any) -> str:
    return "gen_random_uuid()"


@compiles(random_uuid, "mysql")
@compiles(random_uuid, "mariadb")
def _random_uuid_mysql(element: random_uuid, compiler: SQLCompiler, **kw: Any) -> str:
    return "(replace(uuid(), '-', ''))"
