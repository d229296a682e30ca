"""Successful outcomes and leases: :meth:`~retryqueue.queue.RetryQueue.complete` (one, many,
or with the next claim), :meth:`~retryqueue.queue.RetryQueue.heartbeat` and
:meth:`~retryqueue.queue.RetryQueue.release`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.orm import Session

from retryqueue import encryption, hooks
from retryqueue import statements as sql
from retryqueue import validation as check
from retryqueue._rows import claimed_item, history_row, lease_of, required_token, valid_ids
from retryqueue.errors import InvalidArgument
from retryqueue.policy import Outcome
from retryqueue.queue._claims import _Claims
from retryqueue.queue._support import (
    _atomic,
    _core,
    _database_errors,
    _guard,
    _hot_rows,
    _returning_rows,
)
from retryqueue.results import ClaimedItem


class _Outcomes(_Claims):
    """Completing claimed items; extending and giving back leases."""

    @_database_errors
    def complete(
        self,
        session: Session,
        item: ClaimedItem | int,
        worker_id: str | None = None,
        *,
        lease_token: uuid.UUID | None = None,
        duration_ms: int | None = None,
        force: bool = False,
    ) -> bool:
        """Mark an item completed. Only its lease holder can, and only while processing.

        Pass the :class:`ClaimedItem` from :meth:`acquire`, or an id with ``worker_id`` and
        ``lease_token`` (required: the lease is the only key). Returns False, changing
        nothing, if the lease was lost: the lock expired and someone acquired it again —
        even a worker with the same worker id.

        ``force=True`` is the operator's path (``retryqueue complete ID``): the item, given
        by id, is completed whatever its lease, if it is pending or processing;
        ``worker_id`` is then only recorded as who did it. A worker still running it is
        refused its outcome later.
        """
        item_id, actor, token = lease_of(item, worker_id, lease_token, force=force)
        duration_ms = check.optional_duration_ms("duration_ms", duration_ms)
        at = self.now(session)
        done = _returning_rows(session, sql.complete_owned(at, _guard(item_id, token)))
        row = done[0] if done else None
        if (hook := hooks.active) is not None and isinstance(item, ClaimedItem):
            hook.outcome(item, Outcome.COMPLETED.value if row else "lost", None)
        if row is None:
            return False
        self._write_attempt(
            session, at, row, Outcome.COMPLETED, worker_id=actor, duration_ms=duration_ms
        )
        return True

    @_database_errors
    def complete_many(
        self,
        session: Session,
        items: Sequence[ClaimedItem],
        *,
        durations_ms: Sequence[int | None] | None = None,
    ) -> set[int]:
        """Complete many claimed items of one worker in one UPDATE and one history INSERT.

        Returns the ids completed; an item missing from the answer had lost its lease and
        was left alone.
        """
        completed = self._complete_many(session, items, durations_ms)
        if (hook := hooks.active) is not None:
            for item in items:
                hook.outcome(
                    item, Outcome.COMPLETED.value if item.id in completed else "lost", None
                )
        return completed

    def _complete_many(
        self,
        session: Session,
        items: Sequence[ClaimedItem],
        durations_ms: Sequence[int | None] | None,
    ) -> set[int]:
        if not items:
            return set()
        if durations_ms is not None:
            if len(durations_ms) != len(items):
                raise InvalidArgument("durations_ms", "needs one entry per item")
            durations_ms = [check.optional_duration_ms("durations_ms", ms) for ms in durations_ms]
        workers = {item.locked_by for item in items}
        if len(workers) != 1:
            raise InvalidArgument("items", "must all be claimed by the same worker")
        worker_id = workers.pop()
        at = self.now(session)
        leases = [(item.id, required_token(item.lease_token)) for item in items]
        if session.get_bind().dialect.name == "postgresql":  # both writes in one statement
            durations = list(durations_ms) if durations_ms is not None else [None] * len(items)
            recorded, values = sql.complete_and_record(at, worker_id, leases, durations)
            return set(_core(session).execute(recorded, values).scalars())
        stmt, params = sql.complete_many(at, leases)
        rows = _returning_rows(session, stmt, params)
        duration_of = dict(zip((item.id for item in items), durations_ms or [], strict=False))
        self._write_history(
            session,
            at,
            [
                history_row(
                    row.id,
                    row.event_id,
                    row.retry_count + 1,
                    Outcome.COMPLETED,
                    worker_id=worker_id,
                    duration_ms=duration_of.get(row.id),
                )
                for row in rows
            ],
        )
        return {row.id for row in rows}

    def complete_and_acquire(
        self,
        session: Session,
        items: Sequence[ClaimedItem],
        worker_id: str,
        batch_size: int = 10,
        lock_timeout: float = 300,
        *,
        durations_ms: Sequence[int | None] | None = None,
        reclaim_stale: bool = True,
    ) -> tuple[set[int], list[ClaimedItem]]:
        """:meth:`complete_many` then :meth:`acquire` (no circuit filter), for a worker
        whose flush completes a batch and claims the next: one statement on PostgreSQL when
        no stale-lock sweep is due and no rate limit or pause is in force, else the two
        calls in one transaction. Returns (ids completed, claimed).
        """
        if (
            not items
            or reclaim_stale
            or session.get_bind().dialect.name != "postgresql"
            or self.limit_presence.active(session, self.now(session))  # the claim reads limits
        ):
            with _atomic(session):  # a worker's flush may run autocommitted: one transaction
                completed = self.complete_many(session, items, durations_ms=durations_ms)
                claimed = self.acquire(
                    session, worker_id, batch_size, lock_timeout, reclaim_stale=reclaim_stale
                )
            return completed, claimed
        completed, claimed = self._complete_and_claim(
            session, items, worker_id, batch_size, lock_timeout, durations_ms
        )
        if (hook := hooks.active) is not None:
            for item in items:
                hook.outcome(
                    item, Outcome.COMPLETED.value if item.id in completed else "lost", None
                )
        return completed, claimed

    @_database_errors
    def _complete_and_claim(
        self,
        session: Session,
        items: Sequence[ClaimedItem],
        worker_id: str,
        batch_size: int,
        lock_timeout: float,
        durations_ms: Sequence[int | None] | None,
    ) -> tuple[set[int], list[ClaimedItem]]:
        worker_id = check.text("worker_id", worker_id)
        batch_size = check.bounded_int("batch_size", batch_size, low=1, high=10_000)
        lock_timeout = check.seconds("lock_timeout", lock_timeout, allow_zero=False)
        durations_ms = (
            None
            if durations_ms is None
            else [check.optional_duration_ms("durations_ms", ms) for ms in durations_ms]
        )
        if durations_ms is not None and len(durations_ms) != len(items):
            raise InvalidArgument("durations_ms", "needs one entry per item")
        if any(item.locked_by != worker_id for item in items):
            raise InvalidArgument("items", "must all be claimed by this worker")
        leases = [(item.id, required_token(item.lease_token)) for item in items]
        durations = list(durations_ms) if durations_ms is not None else [None] * len(items)
        at = self.now(session)
        stmt, params = sql.complete_record_and_claim(
            at,
            worker_id,
            leases,
            durations,
            uuid.uuid4(),
            batch_size,
            lock_timeout=lock_timeout,
        )
        rows = _hot_rows(session, stmt, params)
        completed = {item.id for item in items}.difference(rows[0][0] or ())  # 0: lost_ids
        claimed = [  # 0: lost_ids; then the claimed columns, as the driver returns them
            claimed_item(row, 1, driver_values=True) for row in rows if row[1] is not None
        ]
        claimed.sort(key=lambda item: (-item.priority, item.next_retry_at, item.id))
        if any(isinstance(item.event_data, encryption.Undecryptable) for item in claimed):
            with _atomic(session):  # rare: a worker's flush may run autocommitted
                claimed = self._quarantine(claimed, session, at)
        return completed, claimed

    @_database_errors
    def heartbeat(
        self,
        session: Session,
        worker_id: str,
        item_ids: Sequence[int] | None = None,
        *,
        lease_token: uuid.UUID | None = None,
        lock_timeout: float = 300,
    ) -> list[int]:
        """Extend the locks the lease ``lease_token`` (required) still holds: all of its
        items, or those in ``item_ids``; each now expires ``lock_timeout`` seconds from now
        (pass the ``lock_timeout`` you acquired with; the Worker does).

        Returns the ids still held: an id missing from the answer was lost (its lock
        expired and it was reclaimed) and its outcome will be refused.
        """
        check.text("worker_id", worker_id)
        token = required_token(lease_token)
        lock_timeout = check.seconds("lock_timeout", lock_timeout, allow_zero=False)
        ids = valid_ids(item_ids)
        at = self._locked_now(session)
        stmt = sql.heartbeat(at, token, ids, lock_timeout)
        return sorted(row.id for row in _returning_rows(session, stmt))

    @_database_errors
    def release(
        self,
        session: Session,
        worker_id: str,
        item_ids: Sequence[int] | None = None,
        *,
        lease_token: uuid.UUID | None = None,
        force: bool = False,
    ) -> list[int]:
        """Give a lease's processing items back to pending at once (e.g. on shutdown).

        ``lease_token`` is required: all of the lease's items, or those in ``item_ids``.
        ``force=True`` is the operator's path (``retryqueue release ID...``): the
        processing items in ``item_ids`` (required), whoever holds them; their holders'
        outcomes are then refused. Not an attempt: retry_count and the due time are
        unchanged, no history is written. Returns the ids released.
        """
        check.text("worker_id", worker_id)
        if not isinstance(force, bool):
            raise InvalidArgument("force", "expected a bool")
        ids = valid_ids(item_ids)
        if force:
            if lease_token is not None:
                raise InvalidArgument("force", "ignores leases; pass lease_token or force=True")
            if not ids:
                raise InvalidArgument("item_ids", "an operator's release names the items")
            stmt = sql.release_forced(ids)
        else:
            stmt = sql.release(required_token(lease_token), ids)
        return sorted(row.id for row in _returning_rows(session, stmt))
