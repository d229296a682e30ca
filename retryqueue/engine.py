"""Engine setup: the few connection settings the queue relies on.

SQLite has no row locks, so ``FOR UPDATE SKIP LOCKED`` compiles to nothing there. The
queue stays correct because every transaction on an engine configured here starts with
``BEGIN IMMEDIATE``: it takes SQLite's single write lock up front, so acquisitions are
serialised and never fail half-way with "database is locked". Use :func:`create_engine`,
or call :func:`configure_sqlite` on an engine you made yourself.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy
from sqlalchemy import Engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from retryqueue.errors import InvalidArgument

__all__ = ["configure_sqlite", "create_engine", "normalise_url"]


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


def create_engine(url: str | URL, **kwargs: Any) -> Engine:
    """Create an engine set up for the queue (SQLite: BEGIN IMMEDIATE, WAL, busy timeout).

    An in-memory SQLite URL gets one shared connection so that every thread sees the
    same database. MySQL/MariaDB engines default to ``READ COMMITTED`` (fewer gap locks
    under concurrent claims); pass ``isolation_level`` to choose another.
    """
    parsed = normalise_url(url)
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
