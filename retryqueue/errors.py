"""The library's exceptions: one base class, with families beneath it.

Every error the library raises is a :class:`RetryQueueError`. Errors that come from the
database are raised ``from`` the driver's exception, so the cause stays visible.
"""

from __future__ import annotations

__all__ = [
    "DatabaseError",
    "EnqueueRaceError",
    "InvalidArgument",
    "ItemNotFound",
    "MigrationError",
    "RetryQueueError",
    "database_error",
]


class RetryQueueError(Exception):
    """Base class of every error raised by retryqueue."""


class InvalidArgument(RetryQueueError, ValueError):
    """A caller passed a value the queue cannot accept; nothing was written.

    ``field`` names the offending argument or column.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class ItemNotFound(RetryQueueError, LookupError):
    """No queue item has the given id."""

    def __init__(self, item_id: int) -> None:
        self.item_id = item_id
        super().__init__(f"no retry queue item with id {item_id}")


class DatabaseError(RetryQueueError):
    """The database refused or failed a statement (connection lost, missing table, ...).

    The original SQLAlchemy/driver exception is available as ``__cause__``. The message
    never contains the database URL or its password.
    """


class EnqueueRaceError(DatabaseError):
    """An enqueue found its event_id taken, but the holding row kept vanishing (purged or
    cleaned up by a concurrent transaction) before its id could be read, several times.

    Nothing was written for that event_id; retrying the transaction is safe.
    """

    def __init__(self, event_id: object, attempts: int) -> None:
        self.event_id = event_id
        super().__init__(
            f"enqueue of event_id {event_id}: the existing item was removed concurrently "
            f"{attempts} times in a row; nothing written, retry"
        )


class MigrationError(RetryQueueError):
    """Applying or inspecting the schema migrations failed."""


def database_error(operation: str, exc: BaseException) -> DatabaseError:
    """A :class:`DatabaseError` for a failed operation: one line, no SQL, no parameters.

    Raise it ``from exc``. The driver's own message is kept (its first line), never the
    statement or its bound values, which may carry payload data.
    """
    origin = getattr(exc, "orig", None)
    detail = str(origin if origin is not None else exc).strip()
    first_line = detail.splitlines()[0] if detail else type(exc).__name__
    return DatabaseError(f"{operation} failed: {first_line}")
