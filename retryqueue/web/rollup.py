"""The dashboard's hourly roll-up, off the request path.

A page rolls up at most :data:`PER_VIEW` closed hours (see :mod:`retryqueue.hourly`) and
shows the others as "not counted yet"; :func:`keep_rolled_up` rolls up every missing
hour in the background, one hour per transaction, every minute, so that pages normally
find nothing left to do. ``retryqueue dashboard`` runs it; an application that mounts the
dashboard runs it in its own lifespan (Starlette does not run a mounted app's lifespan).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import validation as check
from retryqueue.errors import RetryQueueError
from retryqueue.hourly import roll_up
from retryqueue.queue import RetryQueue

__all__ = ["PER_VIEW", "RollUpLoop", "keep_rolled_up", "roll_up_some"]

PER_VIEW = 1
"""Closed hours a page rolls up at most per request (the newest missing one)."""

_log = logging.getLogger("retryqueue.web")


def roll_up_some(
    sessions: sessionmaker[Session], queue: RetryQueue, hours: int, limit: int | None
) -> int:
    """Roll up at most ``limit`` missing closed hours of the last ``hours`` (all of them
    when None), one hour per transaction; returns how many. A failure (another reader
    rolling up the same hour, a database user without INSERT) is logged and ends it."""
    done = 0
    while limit is None or done < limit:
        try:
            with sessions() as session, session.begin():
                count = roll_up(session, queue.now(session), hours, limit=1)
        except RetryQueueError as exc:
            _log.debug("hourly roll-up stopped: %s", exc)
            break
        if not count:
            break
        done += count
    return done


@dataclass
class RollUpLoop:
    """A background roll-up: what it has done so far (see :func:`keep_rolled_up`)."""

    sessions: sessionmaker[Session]
    queue: RetryQueue
    hours: int
    every: float
    rounds: int = 0
    """Rounds finished (each rolls up every missing hour, or stops at a failure)."""
    hours_rolled_up: int = 0
    running: bool = False
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    def _round(self) -> int:
        done = 0
        while not self._stop.is_set():
            count = roll_up_some(self.sessions, self.queue, self.hours, 1)
            if not count:
                break
            done += count
        return done

    async def run(self, wake: asyncio.Event) -> None:
        """Round after round, ``every`` seconds apart, until ``wake`` is set."""
        while not wake.is_set():
            try:
                self.hours_rolled_up += await asyncio.to_thread(self._round)
            except Exception as exc:  # the loop outlives a bad round (database down...)
                _log.warning("hourly roll-up failed: %s: %s", type(exc).__name__, exc)
            self.rounds += 1
            try:
                async with asyncio.timeout(self.every):
                    await wake.wait()
            except TimeoutError:
                pass


@asynccontextmanager
async def keep_rolled_up(
    database: Engine | sessionmaker[Session],
    *,
    every: float = 60.0,
    hours: int = 24,
    queue: RetryQueue | None = None,
) -> AsyncIterator[RollUpLoop]:
    """Roll up the dashboard's closed hours in the background while the block runs: at
    once, then every ``every`` seconds; on exit, stop after the hour being rolled up.

    For an application that mounts the dashboard (``retryqueue dashboard`` does it
    itself)::

        @asynccontextmanager
        async def lifespan(app):
            async with keep_rolled_up(engine):
                yield

    ``hours`` and ``queue`` (its clock) should match the dashboard's chart. The database
    user needs INSERT on ``daz_retry_hourly``; several processes may run it at once.
    """
    every = check.seconds("every", every, allow_zero=False)
    hours = check.bounded_int("hours", hours, low=1, high=24 * 31)
    sessions = (
        database
        if isinstance(database, sessionmaker)
        else sessionmaker(database, expire_on_commit=False)
    )
    loop = RollUpLoop(sessions, queue or RetryQueue(), hours, every)
    wake = asyncio.Event()
    task = asyncio.create_task(loop.run(wake), name="retryqueue hourly roll-up")
    loop.running = True
    try:
        yield loop
    finally:
        loop._stop.set()
        wake.set()
        await task
        loop.running = False
