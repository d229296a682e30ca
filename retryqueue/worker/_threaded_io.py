"""The thread worker's database side outside its flushes: its transactions (and each
driver's autocommitted lane), give-backs, the registry, lease renewals, the idle wait and
the NOTIFY wake-up. The base of :class:`~retryqueue.worker.threaded.Worker`; private.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from retryqueue.errors import DatabaseError, database_error
from retryqueue.results import ClaimedItem
from retryqueue.worker._base import WorkerBase
from retryqueue.worker._batch import Lane
from retryqueue.worker._pipeline import Pipeline
from retryqueue.worker.listener import NotifyListener, supports_listen

__all__ = ["ThreadedIO", "Wakeup", "WorkerLane"]

WorkerLane = Lane[Connection, Session]  # see Lane


class ThreadedIO(WorkerBase):
    """The thread worker's transactions, give-backs, leases and idle wait (the attributes
    below are set by :class:`~retryqueue.worker.threaded.Worker`)."""

    sessions: sessionmaker[Session]
    listen_engine: Engine | None
    _engine: Engine | None
    _lock: threading.Lock  # guards the pipeline's queues
    _changed: threading.Condition  # on _lock: the drivers wait on it
    _db_lock: threading.Lock  # one lease renewal or release at a time
    _report_lock: threading.Lock  # the run's tally and the observers' calls
    _wakeup: Wakeup
    _crash: BaseException | None

    # -- transactions --------------------------------------------------------------------

    def _registry_round(self, step: str | None) -> None:
        """Register, heartbeat or leave the worker registry (one transaction)."""
        if step is None:
            return
        try:
            with self._transaction("worker registry") as session:
                self._registry_step(session, step)
        except DatabaseError as exc:
            self._registry_done(step, exc)
        else:
            self._registry_done(step, None)

    @contextmanager
    def _transaction(
        self, operation: str, *, autocommit: bool = False, lane: WorkerLane | None = None
    ) -> Iterator[Session]:
        """A session in a transaction; ``autocommit``: on the driver's (``lane``)
        autocommitted connection instead, for a step that is a single statement."""
        try:
            if autocommit and lane is not None and self._engine is not None:
                session = self._solo_session(lane, self._engine)
                try:
                    yield session
                except BaseException:
                    self._drop_solo(lane)  # it may be broken: the next flush connects afresh
                    raise
                # Kept open for the lane's next flush: on an autocommitted connection its
                # transaction is SQLAlchemy's bookkeeping only (no BEGIN was sent), and
                # closing and beginning it again cost about a tenth of a flush's CPU.
                if session.identity_map:  # a quarantine loaded rows: none carried over
                    session.expunge_all()
            else:
                with self.sessions.begin() as session:
                    yield session
        except SQLAlchemyError as exc:  # commit/rollback errors are not wrapped by the queue
            raise database_error(operation, exc) from exc

    def _solo_session(self, lane: WorkerLane, engine: Engine) -> Session:
        """The session on the autocommitted connection a driver keeps for its
        single-statement flushes (both made once, not once per batch; the connection is
        returned when the drive ends)."""
        if lane.solo is None or lane.session is None:
            connection = engine.connect()
            try:
                lane.solo = connection.execution_options(isolation_level="AUTOCOMMIT")
            except BaseException:
                connection.close()
                raise
            lane.session = self.sessions(bind=lane.solo)
        return lane.session

    @staticmethod
    def _drop_solo(lane: WorkerLane) -> None:
        solo, session = lane.solo, lane.session
        lane.solo = lane.session = None
        if session is not None:
            with suppress(SQLAlchemyError):
                session.close()
        if solo is not None:
            with suppress(SQLAlchemyError):
                solo.close()

    def _release_unstarted(
        self,
        pipe: Pipeline,
        tally: dict[str, int],
        given: list[ClaimedItem] | None = None,
        why: str = "unstarted",
    ) -> None:
        """Give back the items no handler started: all at shutdown, or those ``given``
        (overdue, or brought by a claim that was running at shutdown)."""
        if given is None:
            with self._lock:
                unstarted = pipe.take_unstarted()
        else:
            unstarted = given
        if not unstarted:
            return
        ids = [item.id for item in unstarted]
        released: int | DatabaseError
        with self._db_lock:
            with self._lock:
                pipe.forget(ids)
            try:
                with self._transaction("release") as session:
                    released = self._release(session, unstarted)
            except DatabaseError as exc:
                released = exc
        with self._report_lock:
            self._report_released(ids, released, tally, why)

    # -- leases --------------------------------------------------------------------------

    def _heartbeat_loop(self, pipe: Pipeline, stop: threading.Event) -> None:
        """The one periodic heartbeat of a running worker: renew every lease held, and keep
        the worker's row in the registry alive (also while idle)."""
        while not stop.wait(self.heartbeat_interval):
            try:
                self._renew_held(pipe, None)
            except DatabaseError as exc:
                self._log_heartbeat_failed(exc)
            self._registry_round(self._registry_due())

    def _extend_one(self, pipe: Pipeline, item_id: int) -> bool:
        return item_id in self._renew_held(pipe, [item_id])

    def _renew_held(self, pipe: Pipeline, only: list[int] | None) -> set[int]:
        """Renew leases once no pipeline transaction runs, keeping new ones out meanwhile
        (see :mod:`retryqueue.worker._pipeline`)."""
        with self._db_lock:  # one renewal or release at a time
            with self._lock:
                pipe.renewing = True
                try:
                    while not pipe.quiet() and self._crash is None:
                        self._changed.wait()
                    held = pipe.held_items(only)
                except BaseException:
                    self._end_renewal(pipe)
                    raise
            try:
                if not held:
                    return set()
                with self._transaction("heartbeat") as session:
                    kept = self._renew(session, held)
                with self._lock:
                    self._note_renewal(pipe, held, kept)
                return kept
            finally:
                with self._lock:
                    self._end_renewal(pipe)

    def _end_renewal(self, pipe: Pipeline) -> None:
        """The renewal is over: pipeline transactions may start again (caller holds the
        pipeline's lock)."""
        pipe.renewing = False
        self._changed.notify_all()

    # -- waiting -------------------------------------------------------------------------

    def _start_listener(self) -> NotifyListener | None:
        bind = self.listen_engine or self.sessions.kw.get("bind")
        if not self.listen or not isinstance(bind, Engine) or not supports_listen(bind):
            return None
        listener = NotifyListener(bind, self._wakeup)
        listener.start()
        return listener

    def _idle_wait(self) -> float:
        """Seconds to sleep: until the next item is due, at most poll_interval."""
        try:
            with self._transaction("seconds_until_claimable") as session:
                return self._idle_for(self._due(session))
        except DatabaseError as exc:
            self._log_due_unknown(exc)
            return self.poll_interval


class Wakeup(threading.Event):
    """The idle wake-up (NOTIFY, stop): an event that also wakes the pipeline's driver."""

    def __init__(self, changed: threading.Condition) -> None:
        super().__init__()
        self._changed = changed

    def set(self) -> None:
        super().set()
        with self._changed:
            self._changed.notify_all()
