"""Helpers for race tests: run a call in a thread, await a condition, see lock waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, text

WAIT = 60.0


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll a condition (a state, not a duration) until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Background:
    """A call run in a thread; ``result()`` returns its value or raises its exception."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.value = call()
        except BaseException as exc:  # handed to result()
            self.error = exc
        finally:
            self.done.set()

    def result(self) -> Any:
        """The call's value, once it has finished (re-raises what it raised)."""
        self.thread.join(WAIT)
        assert self.done.is_set(), "the call never finished"
        if self.error is not None:
            raise self.error
        return self.value


def session_id(connection: Connection) -> int:
    """The server-side id of this connection (PostgreSQL backend pid, MySQL thread id)."""
    if connection.dialect.name == "postgresql":
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())
    return int(connection.execute(text("SELECT CONNECTION_ID()")).scalar_one())


def waits_for_a_lock(engine: Engine, server_id: int) -> bool:
    """Whether that connection is blocked on a row or table lock right now."""
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            found = connection.execute(
                text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :p"),
                {"p": server_id},
            ).scalar()
            return found == "Lock"
        found = connection.execute(
            text(
                "SELECT trx_state FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = :p"
            ),
            {"p": server_id},
        ).scalar()
        return found == "LOCK WAIT"
