"""PostgreSQL LISTEN on a dedicated connection, so that idle workers wake on NOTIFY.

Enqueue sends ``NOTIFY retryqueue`` inside the enqueuing transaction (delivered on
commit). A :class:`NotifyListener` holds one connection out of the engine's pool in
autocommit mode, runs ``LISTEN`` (the statement comes from :mod:`retryqueue.statements`)
and sets a :class:`threading.Event` for every notification. When the connection breaks
(database restart) it reconnects with capped backoff and sets the event once more, so the
worker re-checks the queue for anything enqueued while it was deaf.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from retryqueue.engine import behind_pgbouncer
from retryqueue.queue import NOTIFY_CHANNEL, listen_statement

__all__ = [
    "Listening",
    "NotifyListener",
    "first_line",
    "reconnect_delay",
    "supports_listen",
]

logger = logging.getLogger("retryqueue.worker")

_CHECK_CLOSED_EVERY = 0.5  # seconds between checks of close() while waiting for NOTIFY
_MAX_BACKOFF = 30.0


def supports_listen(engine: Engine, drivers: tuple[str, ...] = ("psycopg",)) -> bool:
    """Whether this engine can LISTEN: PostgreSQL through one of ``drivers``, not PgBouncer.

    Under transaction pooling a LISTEN lands on whichever server connection runs it, and
    notifications never reach the listener: an engine made with ``pgbouncer=True`` polls.
    """
    return (
        engine.dialect.name == "postgresql"
        and engine.dialect.driver in drivers
        and not behind_pgbouncer(engine)
    )


class Listening:
    """What both listeners (thread and asyncio) keep and how they report a lost connection."""

    def __init__(self, engine: Any, wakeup: Any, channel: str) -> None:
        self._engine = engine
        self._wakeup = wakeup
        self._channel = channel

    def _listening(self) -> None:
        logger.debug("listening for NOTIFY on %s", self._channel, extra={"channel": self._channel})

    def _lost(self, failures: int, exc: BaseException) -> float:
        """Log a lost connection, wake the worker to poll meanwhile; the reconnect delay."""
        delay = reconnect_delay(failures)
        logger.warning(
            "LISTEN connection lost, reconnecting in %.1fs: %s",
            delay,
            first_line(exc),
            extra={"channel": self._channel},
        )
        self._wakeup.set()  # let the worker poll while we are away
        return delay


class NotifyListener(Listening):
    """A background thread that sets ``wakeup`` whenever a NOTIFY arrives on ``channel``."""

    def __init__(
        self, engine: Engine, wakeup: threading.Event, channel: str = NOTIFY_CHANNEL
    ) -> None:
        super().__init__(engine, wakeup, channel)
        self._closed = threading.Event()
        self._connection: Connection | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """LISTEN now (so no NOTIFY after this call is missed), then wait in a thread.

        If the first connection fails, the thread keeps trying; the worker polls meanwhile.
        """
        try:
            self._connect()
        except (SQLAlchemyError, OSError) as exc:
            logger.warning("LISTEN failed, will retry: %s", first_line(exc))
        self._thread = threading.Thread(target=self._run, name="retryqueue-listener", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop listening and close the connection (returns within about half a second)."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._disconnect()

    def _connect(self) -> None:
        connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            connection.execute(listen_statement(self._channel))
        except BaseException:
            connection.invalidate()
            connection.close()
            raise
        self._connection = connection
        self._listening()

    def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            # Never hand a LISTENing connection back to the pool.
            try:
                connection.invalidate()
            finally:
                connection.close()

    def _run(self) -> None:
        failures = 0
        while not self._closed.is_set():
            try:
                if self._connection is None:
                    self._connect()
                    self._wakeup.set()  # anything enqueued while we were deaf
                failures = 0
                self._wait_for_notifies()
            except Exception as exc:  # driver errors come unwrapped from notifies()
                failures += 1
                self._disconnect()
                self._closed.wait(self._lost(failures, exc))

    def _wait_for_notifies(self) -> None:
        assert self._connection is not None
        driver: Any = self._connection.connection.driver_connection
        while not self._closed.is_set():
            for _ in driver.notifies(timeout=_CHECK_CLOSED_EVERY, stop_after=1):
                self._wakeup.set()


def reconnect_delay(failures: int) -> float:
    """Capped, jittered backoff before reconnect attempt number ``failures`` + 1."""
    return min(_MAX_BACKOFF, 0.5 * 2.0 ** (failures - 1)) * random.uniform(0.8, 1.2)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (driver errors span several lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
