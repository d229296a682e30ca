"""What the parts of :class:`~retryqueue.queue.RetryQueue` share below the class: the
constants, database-error wrapping, dialect-aware execution (RETURNING or its MySQL
emulation, Core on the session's connection, one transaction under autocommit), the
expiry and deadline bounds of a decision, and metadata merging.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError
from sqlalchemy.orm import Session

from retryqueue import statements as sql
from retryqueue.errors import RetryQueueError, database_error
from retryqueue.policy import (
    DEADLINE_REACHED,
    RETRY_PAST_EXPIRY,
    Decision,
    Outcome,
    RetryPolicy,
    within_deadline,
)

NOTIFY_CHANNEL = sql.NOTIFY_CHANNEL
UNDECRYPTABLE = "UNDECRYPTABLE"
"""The error code of an item quarantined because its event_data cannot be decrypted."""


def listen_statement(channel: str = NOTIFY_CHANNEL) -> Any:
    """The LISTEN statement a worker runs on its wake-up connection (PostgreSQL)."""
    return sql.listen(channel)


P = ParamSpec("P")
R = TypeVar("R")


def _database_errors(method: Callable[P, R]) -> Callable[P, R]:
    """Re-raise SQLAlchemy errors as :class:`DatabaseError`, keeping the cause."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except RetryQueueError:
            raise
        except SQLAlchemyError as exc:
            raise database_error(method.__name__, exc) from exc

    return wrapper


def _unless_past_deadline(
    row: Any,
    policy: RetryPolicy,
    decision: Decision,
    error_message: str | None,
    error_code: str | None,
    retry_after_given: bool,
) -> tuple[Decision, str | None, str | None]:
    """The decision bounded by the item's retry deadline (or the policy's ``retry_for``).

    A refused retry is recorded with :data:`~retryqueue.policy.DEADLINE_REACHED` as its
    code; the handler's message and code follow the reason in the message.
    """
    if row.now is None:
        return decision, error_message, error_code
    deadline = policy.deadline_of(row.retry_deadline, row.created_at)
    bounded = within_deadline(
        decision, now=row.now, deadline=deadline, retry_after_given=retry_after_given
    )
    if bounded.reason is None:
        return bounded, error_message, error_code
    message = f"dead-lettered: {bounded.reason}"
    if error_message is not None or error_code is not None:
        code = "" if error_code is None else f" ({error_code})"
        message += f"; last error{code}: {error_message or ''}"
    return bounded, message, DEADLINE_REACHED


def _unless_past_expiry(
    row: Any, decision: Decision, error_message: str | None
) -> tuple[Decision, str | None]:
    """A retry due after the item expires is a dead letter, with the reason in the message.

    ``row`` carries ``now`` and ``expires_at`` (see ``statements.lock_owned``).
    """
    if decision.delay is None or row.expires_at is None or row.now is None:
        return decision, error_message
    due = row.now + decision.delay
    if due < row.expires_at:
        return decision, error_message
    reason = (
        f"dead-lettered: {RETRY_PAST_EXPIRY} (retry due {due.isoformat()}, "
        f"expires {row.expires_at.isoformat()})"
    )
    message = reason if error_message is None else f"{reason}; last error: {error_message}"
    return Decision(Outcome.DEAD_LETTERED, "dead_letter", row.retry_count), message


def _merged(metadata: Mapping[str, Any] | None, extra: Mapping[str, Any]) -> dict[str, Any]:
    """``metadata`` with ``extra``'s entries; mappings under the same key are merged."""
    merged: dict[str, Any] = _thawed(metadata or {})
    for key, value in _thawed(extra).items():
        before = merged.get(key)
        merged[key] = (
            {**before, **value} if isinstance(before, dict) and isinstance(value, dict) else value
        )
    return merged


def _thawed(value: Any) -> Any:
    """Plain JSON values from read-only views (mappings become dicts, tuples lists)."""
    if isinstance(value, Mapping):
        return {key: _thawed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_thawed(item) for item in value]
    return value


def _guard(item_id: int, token: uuid.UUID | None) -> Any:
    """The WHERE clause of an outcome: the lease's, or (token None: ``force=True``) the
    operator's."""
    return sql.operator_guard(item_id) if token is None else sql.owned_guard(item_id, token)


def _core(session: Session) -> Connection:
    """The session's connection, for hot statements executed with Core.

    An ORM-enabled UPDATE through ``Session.execute`` pays for the ORM's bulk-update
    machinery on every call; on the connection the same compiled statement runs as plain
    Core (same transaction). Pending ORM changes are flushed first, as autoflush would.
    """
    if session.autoflush and (session.new or session.dirty or session.deleted):
        session.flush()
    return session.connection()


def _hot_rows(session: Session, stmt: Any, params: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
    """The rows of a hot statement (a worker's flush), as the driver returns them.

    On psycopg (sync, or async under ``run_sync``) and on asyncpg the statement's driver
    form (``statements.driver_form``: compiled once) runs on the session's own DB-API
    connection, in its transaction: SQLAlchemy's per-call execution and result wrapping
    cost more than the driver's work here. Wherever SQLAlchemy is watched (cursor or error
    events: tracing, statement counters; echo) or rewrites the SQL as it runs (a
    ``schema_translate_map``), on any other driver, and on asyncpg inside
    a transaction SQLAlchemy has not begun on the server yet, the statement goes through
    SQLAlchemy as usual; its columns must then be typed so that both give the same values
    (``type_coerce(..., NullType())``).
    """
    connection = _core(session)
    dialect = connection.dialect
    if dialect.driver not in _DRIVERS or _watched(connection):
        return connection.execute(stmt, params).all()
    pooled = connection.connection
    driver: Any = pooled.driver_connection
    if dialect.driver == "asyncpg" and not (
        getattr(pooled.dbapi_connection, "autocommit", False) or driver.is_in_transaction()
    ):  # SQLAlchemy's adapter opens the transaction on its first statement: let it
        return connection.execute(stmt, params).all()
    text, values = sql.driver_form(stmt, dialect, params)
    try:
        if dialect.is_async:  # inside run_sync's greenlet: wait for the coroutine there
            from sqlalchemy.util import await_only  # needs greenlet (the async extra)

            if dialect.driver == "asyncpg":
                rows: list[Sequence[Any]] = await_only(driver.fetch(text, *values))
                return rows
            return await_only(_fetch_async(driver, text, values))
        with driver.cursor() as cursor:
            cursor.execute(text, values)
            rows = cursor.fetchall()
            return rows
    except Exception as exc:  # the driver's errors as SQLAlchemy would raise them
        if not _from_driver(dialect.driver, dialect.loaded_dbapi.Error, exc):
            raise
        raise _driver_error(connection, pooled, text, values, exc) from exc
    except BaseException as exc:  # cancelled or interrupted mid-statement, as SQLAlchemy
        connection.invalidate(exc)  # does: the connection's state is unknown, drop it
        raise


_DRIVERS = frozenset({"psycopg", "asyncpg"})


def _from_driver(driver: str, dbapi_error: type[Exception], exc: Exception) -> bool:
    """True when ``exc`` is the database's or the connection's (not a bug of ours)."""
    if isinstance(exc, dbapi_error):
        return True
    return driver == "asyncpg" and (
        type(exc).__module__.partition(".")[0] == "asyncpg"
        or isinstance(exc, OSError | TimeoutError)
    )


def _driver_error(
    connection: Connection, pooled: Any, text: str, values: Any, exc: Exception
) -> StatementError:
    """``exc`` from the driver as SQLAlchemy raises it; a dead connection is invalidated
    (never handed out again). asyncpg's own errors are not DB-API errors: any of them
    drops the connection (the worker's flush connects afresh after a failure anyway)."""
    dialect = connection.dialect
    dbapi_error: type[Exception] = dialect.loaded_dbapi.Error
    if isinstance(exc, dialect.loaded_dbapi.Error):
        gone = dialect.is_disconnect(exc, pooled.dbapi_connection, None)
    else:
        gone, dbapi_error = True, Exception
    if gone:
        connection.invalidate(exc)
    return DBAPIError.instance(
        text, values, exc, dbapi_error, connection_invalidated=gone, dialect=dialect
    )


async def _fetch_async(driver: Any, text: str, values: Any) -> list[Any]:
    async with driver.cursor() as cursor:
        await cursor.execute(text, values)
        rows: list[Any] = await cursor.fetchall()
        return rows


def _watched(connection: Connection) -> bool:
    """True when something observes SQLAlchemy's execution on ``connection``, or changes
    the SQL at execution (a ``schema_translate_map``): then only SQLAlchemy may run it."""
    events = connection.dispatch
    return bool(
        events.before_cursor_execute
        or events.after_cursor_execute
        or connection.dialect.dispatch.handle_error
        or connection.engine.echo
        or connection.get_execution_options().get("schema_translate_map")
    )


@contextmanager
def _atomic(session: Session) -> Iterator[None]:
    """Make the block one transaction even when the session's connection autocommits (a
    worker's single-statement flush): an explicit BEGIN … COMMIT around it. Inside an
    ordinary transaction it is that transaction."""
    connection = session.connection()
    if connection.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
        yield
        return
    connection.exec_driver_sql("BEGIN")
    try:
        yield
    except BaseException:
        connection.exec_driver_sql("ROLLBACK")
        raise
    connection.exec_driver_sql("COMMIT")


def _is_pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _has_returning(session: Session) -> bool:
    return sql.has_returning(session.get_bind().dialect.name)


def _returning_rows(
    session: Session, stmt: Any, params: Mapping[str, Any] | None = None
) -> list[Any]:
    """The rows of an UPDATE/DELETE ... RETURNING (on MySQL: of its three-step form)."""
    if _has_returning(session):
        return list(_core(session).execute(stmt, params).all())
    return _run_emulated(session, sql.emulate_returning(stmt), params)


def _run_emulated(
    session: Session, emulation: sql.Emulation, params: Mapping[str, Any] | None = None
) -> list[Any]:
    # MySQL/MariaDB, in the caller's transaction: lock the ids, change exactly those rows,
    # then read back what RETURNING would have given (ids only for a DELETE).
    ids = list(session.scalars(emulation.lock, params))
    if not ids:
        return []
    session.execute(emulation.apply(ids), params)
    if emulation.read is None:
        return [_IdRow(item_id) for item_id in ids]
    return list(session.execute(emulation.read(ids), params).all())


@dataclass(frozen=True, slots=True)
class _IdRow:
    id: int
