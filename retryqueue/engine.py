"""Engine setup: the few connection settings the queue relies on.

SQLite has no row locks, so ``FOR UPDATE SKIP LOCKED`` compiles to nothing there. The
queue stays correct because every transaction on an engine configured here starts with
``BEGIN IMMEDIATE``: it takes SQLite's single write lock up front, so acquisitions are
serialised and never fail half-way with "database is locked". Use :func:`create_engine`,
or call :func:`configure_sqlite` on an engine you made yourself.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import sqlalchemy
from sqlalchemy import Engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from retryqueue.errors import InvalidArgument

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "PGBOUNCER_OPTION",
    "behind_pgbouncer",
    "configure_sqlite",
    "create_async_engine",
    "create_engine",
    "normalise_async_url",
    "normalise_url",
]


def normalise_url(url: str | URL) -> URL:
    """Parse a database URL; plain ``postgresql://`` means psycopg 3, ``mysql://`` PyMySQL.

    An unparseable URL raises :class:`~retryqueue.errors.InvalidArgument` without echoing
    the URL (it may hold a password).
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        expected = "cannot be parsed (expected dialect://user:password@host/database)"
        raise InvalidArgument("url", expected) from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.drivername in ("mysql", "mariadb"):
        parsed = parsed.set(drivername=f"{parsed.drivername}+pymysql")
    return parsed


PGBOUNCER_OPTION = "retryqueue_pgbouncer"
"""The engine execution option that ``create_engine(..., pgbouncer=True)`` sets."""


def create_engine(url: str | URL, *, pgbouncer: bool = False, **kwargs: Any) -> Engine:
    """Create an engine set up for the queue (SQLite: BEGIN IMMEDIATE, WAL, busy timeout).

    An in-memory SQLite URL gets one shared connection so that every thread sees the
    same database. MySQL/MariaDB engines default to ``READ COMMITTED`` (fewer gap locks
    under concurrent claims); pass ``isolation_level`` to choose another.

    ``pgbouncer=True`` is for a PostgreSQL URL that points at PgBouncer in transaction
    pooling mode, where consecutive transactions of one client may run on different
    server connections: psycopg then never prepares statements server-side
    (``prepare_threshold=None``; PgBouncer before 1.21 cannot track them), and a worker
    on this engine does not LISTEN through it (it polls, or LISTENs on a direct engine).
    Not needed for session pooling or a direct connection.
    """
    parsed = normalise_url(url)
    if pgbouncer:
        kwargs = _behind_pgbouncer(parsed, kwargs)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            kwargs.setdefault("poolclass", StaticPool)
            kwargs.setdefault("connect_args", {"check_same_thread": False})
        engine = sqlalchemy.create_engine(parsed, **kwargs)
        configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        # InnoDB's REPEATABLE READ takes gap and next-key locks on every row a locking read
        # scans; READ COMMITTED locks only the matching rows, so claims contend less.
        kwargs.setdefault("isolation_level", "READ COMMITTED")
    return sqlalchemy.create_engine(parsed, **kwargs)


def behind_pgbouncer(engine: Engine) -> bool:
    """Whether ``engine`` was made with ``create_engine(..., pgbouncer=True)``."""
    return bool(engine.get_execution_options().get(PGBOUNCER_OPTION, False))


def _behind_pgbouncer(parsed: URL, kwargs: dict[str, Any]) -> dict[str, Any]:
    if parsed.get_backend_name() != "postgresql":
        raise InvalidArgument("pgbouncer", "applies to PostgreSQL URLs only")
    kwargs = dict(kwargs)
    connect_args: dict[str, Any] = {}
    if parsed.get_driver_name() == "psycopg":
        # psycopg prepares a statement after 5 executions on a connection and later only
        # names it; under transaction pooling the name may reach a server that never saw it.
        connect_args["prepare_threshold"] = None
    elif parsed.get_driver_name() == "asyncpg":
        # asyncpg always prepares: unique names (never reused on another server
        # connection) and no statement caches, as SQLAlchemy's asyncpg notes advise.
        connect_args["statement_cache_size"] = 0
        connect_args["prepared_statement_name_func"] = _unique_statement_name
    kwargs["connect_args"] = {**connect_args, **kwargs.get("connect_args", {})}
    kwargs["execution_options"] = {**kwargs.get("execution_options", {}), PGBOUNCER_OPTION: True}
    return kwargs


def _unique_statement_name() -> str:
    return f"__retryqueue_{uuid.uuid4().hex}__"


def configure_sqlite(engine: Engine, *, busy_timeout_ms: int = 30_000) -> None:
    """Make every transaction on a SQLite engine ``BEGIN IMMEDIATE``.

    Also turns on WAL for file databases (readers don't block the writer) and a busy
    timeout so that a second process waits for the write lock instead of failing.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "mysql": "mysql+aiomysql"}


def normalise_async_url(url: str | URL) -> URL:
    """Like :func:`normalise_url`, for asyncio drivers.

    Plain ``postgresql://`` means psycopg 3 (its async mode), ``sqlite://`` aiosqlite and
    ``mysql://`` aiomysql; ``postgresql+asyncpg://`` and any other explicit driver stay.
    """
    parsed = normalise_url(url)
    backend = parsed.get_backend_name()
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        parsed = parsed.set(drivername=_ASYNC_DRIVERS["sqlite"])
    elif parsed.drivername in ("mysql+pymysql", "mariadb+pymysql"):
        parsed = parsed.set(drivername=f"{backend}+aiomysql")
    return parsed


def create_async_engine(url: str | URL, *, pgbouncer: bool = False, **kwargs: Any) -> AsyncEngine:
    """Create an :class:`~sqlalchemy.ext.asyncio.AsyncEngine` set up like :func:`create_engine`.

    Drivers (extras ``asyncpg``, ``aiosqlite``, ``aiomysql``): psycopg 3 or asyncpg on
    PostgreSQL, aiosqlite on SQLite (every transaction ``BEGIN IMMEDIATE``, as on the sync
    side), aiomysql on MySQL/MariaDB (``READ COMMITTED`` by default).
    """
    from sqlalchemy.ext.asyncio import create_async_engine as make_async_engine

    parsed = normalise_async_url(url)
    backend = parsed.get_backend_name()
    if pgbouncer:
        kwargs = _behind_pgbouncer(parsed, kwargs)
        if parsed.get_driver_name() == "asyncpg":  # SQLAlchemy's own statement cache
            parsed = parsed.update_query_dict({"prepared_statement_cache_size": "0"})
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        kwargs.setdefault("poolclass", StaticPool)
    if backend in ("mysql", "mariadb"):
        kwargs.setdefault("isolation_level", "READ COMMITTED")
    engine = make_async_engine(parsed, **kwargs)
    if backend == "sqlite":
        configure_sqlite(engine.sync_engine)
    return engine
