"""Administration: requeue (replay), purge, cleanup, key rotation, and the management of
rate limits and pauses (whose logic is in :mod:`retryqueue.limits`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from retryqueue import encryption, hooks, limits
from retryqueue import statements as sql
from retryqueue import validation as check
from retryqueue._rows import history_row
from retryqueue.errors import InvalidArgument, database_error
from retryqueue.fingerprint import fingerprint
from retryqueue.models import TERMINAL_STATUSES, WORKER_DEAD_AFTER_SECONDS, RetryStatus
from retryqueue.policy import MAX_DELAY_SECONDS
from retryqueue.queue._claims import _Claims
from retryqueue.queue._support import (
    _database_errors,
    _has_returning,
    _is_pg,
    _merged,
    _returning_rows,
)
from retryqueue.results import CleanupResult, ItemFilter


class _Admin(_Claims):
    """The operator's actions on many items, and the shared limits."""

    @_database_errors
    def requeue(
        self,
        session: Session,
        selection: ItemFilter | Sequence[int],
        *,
        reset_retries: bool = True,
        requested_by: str | None = None,
    ) -> list[int]:
        """Move finished items (dead_letter and failed by default) back to pending, due now.

        ``selection`` is an :class:`ItemFilter` or a list of ids (dead_letter or failed).
        Completed items are replayed only if the filter's statuses name ``completed``.
        Each requeued item gets a ``requeued`` history row. Returns the ids moved.
        """
        item_filter = check.item_filter(
            selection if isinstance(selection, ItemFilter) else ItemFilter(ids=list(selection))
        )
        requested_by = check.optional_text("requested_by", requested_by)
        statuses = check.status_list("statuses", item_filter.statuses)
        if not set(statuses) <= set(TERMINAL_STATUSES):
            raise InvalidArgument(
                "statuses", "only completed, failed and dead_letter items can be requeued"
            )
        at = self.now(session)
        ids = list(session.scalars(sql.filtered_ids(item_filter, lock=True)))
        if not ids:
            return []
        stmt = sql.requeue_ids(
            at,
            ids,
            statuses,
            reset_retries=reset_retries,
            ttl_seconds=self.default_ttl.total_seconds(),
        )
        moved = _returning_rows(session, stmt)
        if (hook := hooks.active) is not None and moved:
            self._traced_replay(session, hook, sorted(row.id for row in moved), requested_by)
        self._write_history(
            session,
            at,
            [
                history_row(
                    row.id, row.event_id, row.retry_count, "requeued", worker_id=requested_by
                )
                for row in moved
            ],
        )
        return sorted(row.id for row in moved)

    @staticmethod
    def _traced_replay(
        session: Session, hook: hooks.Instrumentation, ids: list[int], requested_by: str | None
    ) -> None:
        extra = hook.replay(ids, requested_by)
        if not extra:
            return
        rows = [
            {"item_id": item_id, "new_metadata": _merged(metadata, extra)}
            for item_id, metadata in session.execute(sql.item_metadata(ids))
        ]
        session.execute(sql.set_metadata(), rows)

    @_database_errors
    def purge(self, session: Session, selection: ItemFilter | Sequence[int]) -> list[int]:
        """Delete the items a filter (or id list) selects; items being processed are kept.

        History rows stay (they are the audit trail). Returns the ids deleted.
        """
        item_filter = check.item_filter(
            selection
            if isinstance(selection, ItemFilter)
            else ItemFilter(statuses=tuple(RetryStatus), ids=list(selection))
        )
        ids = list(session.scalars(sql.filtered_ids(item_filter, lock=True)))
        if not ids:
            return []
        return sorted(row.id for row in _returning_rows(session, sql.purge_ids(ids)))

    def iter_cleanup(
        self, session: Session, retention_days: float = 7, *, batch_size: int = 1000
    ) -> Iterator[CleanupResult]:
        """Clean up in bounded batches, yielding what each batch removed.

        Commit between batches (``for part in queue.iter_cleanup(s): s.commit()``) so that
        live workers are never blocked for long. Removes finished items (completed, failed,
        dead_letter) older than the retention, after moving pending items past expires_at
        to dead_letter (see :meth:`expire`: they are kept for the retention from then on);
        removes history older than twice the retention. Rows locked by
        others are skipped, not waited for.
        """
        longest = MAX_DELAY_SECONDS / 86400
        retention = check.seconds("retention_days", retention_days, maximum=longest) * 86400
        batch_size = check.bounded_int("batch_size", batch_size, low=1, high=100_000)
        at = self.now(session)
        try:
            yield from self._cleanup_batches(session, at, retention, batch_size)
        except SQLAlchemyError as exc:
            raise database_error("cleanup", exc) from exc

    def _cleanup_batches(
        self, session: Session, at: datetime | None, retention: float, batch_size: int
    ) -> Iterator[CleanupResult]:
        while True:  # first, nothing expired unrun is deleted unseen: it is dead-lettered
            expired = self._dead_letter_expired(session, at, batch_size)
            yield CleanupResult(expired_count=expired)
            if expired < batch_size:
                break
        created_before = yield from _drop_partitions(session, at, retention)
        while True:
            count = self._delete_finished(session, at, retention, batch_size, created_before)
            yield CleanupResult(deleted_count=count)
            if count < batch_size:
                break
        while True:
            count = self._delete_history(session, at, 2 * retention, batch_size)
            yield CleanupResult(history_deleted_count=count)
            if count < batch_size:
                break
        audit: Any = session.execute(sql.delete_circuit_events(at, 2 * retention))
        yield CleanupResult(circuit_events_deleted=int(audit.rowcount))
        hourly: Any = session.execute(sql.delete_hourly(at, 2 * retention))
        yield CleanupResult(hourly_rows_deleted=int(hourly.rowcount))
        workers: Any = session.execute(sql.delete_silent_workers(at, WORKER_DEAD_AFTER_SECONDS))
        yield CleanupResult(worker_rows_deleted=int(workers.rowcount))

    @staticmethod
    def _delete_finished(
        session: Session,
        at: datetime | None,
        retention: float,
        batch_size: int,
        created_before: datetime | None = None,
    ) -> int:
        return _delete_batch(
            session,
            sql.delete_finished_batch(
                at, retention, batch_size, created_before=created_before, once=_is_pg(session)
            ),
            sql.finished_batch_ids(at, retention, batch_size, created_before=created_before),
            sql.delete_by_ids,
        )

    @staticmethod
    def _delete_history(
        session: Session, at: datetime | None, retention: float, batch_size: int
    ) -> int:
        return _delete_batch(
            session,
            sql.delete_history_batch(at, retention, batch_size, once=_is_pg(session)),
            sql.history_batch_ids(at, retention, batch_size),
            sql.delete_history_by_ids,
        )

    def iter_rotate_keys(self, session: Session, *, batch_size: int = 500) -> Iterator[int]:
        """Re-encrypt event_data and error messages under the newest key, in batches.

        Reads each row with whichever configured key sealed it (or as plaintext) and writes
        it back sealed with the newest key (see :mod:`retryqueue.encryption`). Yields the
        number of rows rewritten per batch; commit between batches. Rows being processed
        are rewritten too: only the sealed columns change.

        Queue rows are locked from the read to the commit, so a concurrent outcome (a
        ``fail()`` writing its error message) is never overwritten by the older value read
        here. Rows another transaction holds are skipped and come back at the end, where
        they are waited for.
        """
        batch_size = check.bounded_int("batch_size", batch_size, low=1, high=100_000)
        try:
            last, skipped = 0, list[int]()
            while rows := session.execute(sql.sealed_queue_rows(last, batch_size)).all():
                _refuse_undecryptable(rows)
                self._rewrite_queue_rows(session, rows)
                seen = {r.id for r in rows}
                between = session.scalars(sql.queue_ids_between(last, rows[-1].id))
                skipped += [item_id for item_id in between if item_id not in seen]
                last = rows[-1].id
                yield len(rows)
            for start in range(0, len(skipped), batch_size):
                chunk = skipped[start : start + batch_size]
                rows = session.execute(sql.sealed_queue_rows_by_id(chunk)).all()
                if rows:  # the others were deleted meanwhile
                    self._rewrite_queue_rows(session, rows)
                    yield len(rows)
            last = 0
            while rows := session.execute(sql.sealed_history_rows(last, batch_size)).all():
                _refuse_undecryptable(rows)
                session.execute(
                    sql.rewrite_history_rows(),
                    [{"id": r.id, "error_message": r.error_message} for r in rows],
                )
                last = rows[-1].id
                yield len(rows)
        except SQLAlchemyError as exc:
            raise database_error("rotate_keys", exc) from exc

    def iter_refingerprint(
        self, session: Session, *, batch_size: int = 500
    ) -> Iterator[tuple[int, int]]:
        """Recompute the error fingerprint of every item that carries an error, with the
        normalisation rules in force in this process (see
        :func:`retryqueue.fingerprint.add_rule`): after a rule change, the dead letters
        of one failure fall into one group again instead of the old and the new.

        Works in batches of ``batch_size`` items by id and yields ``(items read,
        fingerprints changed)`` per batch; commit between batches (a batch's rows stay
        locked until then, so a concurrent failure's new message and fingerprint are not
        overwritten). An item another transaction holds meanwhile is skipped (SKIP LOCKED)
        and keeps its fingerprint until the next run; so does one whose message cannot be
        decrypted here. History rows keep the fingerprint they were written with (an audit
        trail, which the runtime role cannot update).
        """
        batch_size = check.bounded_int("batch_size", batch_size, low=1, high=100_000)
        last = 0
        try:
            while ids := list(session.scalars(sql.failed_ids_after(last, batch_size))):
                rows = session.execute(sql.lock_failed_rows(ids)).all()
                changed = [
                    {"id": row.id, "error_fingerprint": group}
                    for row in rows
                    if not isinstance(row.error_message, encryption.Undecryptable)
                    and (group := fingerprint(row.last_error_code, row.error_message))
                    != row.error_fingerprint
                ]
                if changed:
                    session.execute(sql.set_fingerprint(), changed)
                last = ids[-1]
                yield len(rows), len(changed)
        except SQLAlchemyError as exc:
            raise database_error("refingerprint", exc) from exc

    @staticmethod
    def _rewrite_queue_rows(session: Session, rows: Sequence[Any]) -> None:
        session.execute(
            sql.rewrite_queue_rows(),
            [
                {"id": r.id, "event_data": r.event_data, "error_message": r.error_message}
                for r in rows
            ],
        )

    def cleanup(
        self, session: Session, retention_days: float = 7, *, batch_size: int = 1000
    ) -> CleanupResult:
        """Run every cleanup batch (without committing) and return the totals."""
        total = CleanupResult()
        for part in self.iter_cleanup(session, retention_days, batch_size=batch_size):
            total = total + part
        return total

    # -- rate limits and pauses (the logic is in retryqueue.limits) -----------------------

    @_database_errors
    def set_limit(
        self, session: Session, key: str, rate: float, burst: float | None = None
    ) -> limits.KeyLimit:
        """Limit ``key`` (plugin or plugin:event_type) to ``rate`` items per second with
        bursts of ``burst``, for every worker (see :func:`retryqueue.limits.set_limit`)."""
        self.limit_presence.invalidate()
        return limits.set_limit(session, self.now(session), key, rate, burst)

    @_database_errors
    def clear_limit(self, session: Session, key: str) -> limits.KeyLimit | None:
        """Remove ``key``'s rate limit (see :func:`retryqueue.limits.clear_limit`)."""
        self.limit_presence.invalidate()
        return limits.clear_limit(session, self.now(session), key)

    @_database_errors
    def pause_key(
        self,
        session: Session,
        key: str,
        *,
        until: datetime | None = None,
        seconds: float | timedelta | None = None,
        reason: str = limits.REASON_PAUSED,
    ) -> limits.KeyLimit:
        """Pause ``key`` until ``until`` or for ``seconds``: every worker skips its items
        until then (see :func:`retryqueue.limits.pause_key`)."""
        self.limit_presence.invalidate()
        at = self.now(session)
        return limits.pause_key(session, at, key, until=until, seconds=seconds, reason=reason)

    @_database_errors
    def resume_key(self, session: Session, key: str) -> limits.KeyLimit | None:
        """Lift ``key``'s pause now (see :func:`retryqueue.limits.resume_key`)."""
        self.limit_presence.invalidate()
        return limits.resume_key(session, self.now(session), key)

    @_database_errors
    def key_limits(self, session: Session) -> list[limits.KeyLimit]:
        """Every key with a rate limit or a current pause, by key."""
        return limits.key_limits(session, self.now(session))


def _refuse_undecryptable(rows: Sequence[Any]) -> None:
    """Key rotation must not write back what it could not read (the old key would be lost)."""
    for row in rows:
        for name in ("event_data", "error_message"):
            value = getattr(row, name, None)
            if isinstance(value, encryption.Undecryptable):
                raise encryption.EncryptionError(
                    f"row {row.id}: {name} cannot be decrypted ({value.reason}); rotation "
                    "stopped: configure every key still in use (newest first) and run it again"
                )


def _drop_partitions(
    session: Session, at: datetime | None, retention: float
) -> Generator[CleanupResult, None, datetime | None]:
    """On a partitioned table (PostgreSQL), drop the months past the retention.

    Returns None on a plain table; else the start of the oldest month not past the
    retention: DELETE-based cleanup then only touches the older months that had to be
    kept (they still hold live items), never the months that will be dropped later.
    """
    if session.get_bind().dialect.name != "postgresql":
        return None
    # Imported here: the migrations package brings alembic, which workers never need.
    from retryqueue.migrations import partitioning

    # session.connection() again after every yield: the caller may commit in between.
    if not partitioning.is_partitioned(session.connection()):
        return None
    cutoff = partitioning.server_now(session.connection(), at) - timedelta(seconds=retention)
    for part in partitioning.partitions_past(session.connection(), cutoff):
        drop = partitioning.drop_partition(session.connection(), part, cutoff)
        if drop.dropped:
            # Before the yield, in the drop's transaction: a caller that stops iterating
            # must not leave the month's event keys behind forever.
            partitioning.forget_keys(session.connection(), part)
            yield CleanupResult(deleted_count=drop.rows, partitions_dropped=1)
    return partitioning.month_start(cutoff)


def _delete_batch(
    session: Session,
    in_one_statement: Any,
    batch_ids: Any,
    delete_ids: Callable[[Sequence[int]], Any],
) -> int:
    """Delete one bounded batch; returns how many rows went."""
    if _has_returning(session):
        return int(session.execute(in_one_statement).rowcount)  # type: ignore[attr-defined]
    # MySQL cannot DELETE through a LIMITed subquery of the same table: ids first.
    ids = list(session.scalars(batch_ids))
    if ids:
        session.execute(delete_ids(ids))
    return len(ids)
