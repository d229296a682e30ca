"""Claiming: :meth:`~retryqueue.queue.RetryQueue.acquire` (with the stale-lock reclaim, the
expiry sweep and the quarantine of undecryptable items) and the idle worker's wait.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from retryqueue import encryption, limits
from retryqueue import statements as sql
from retryqueue import validation as check
from retryqueue._rows import claimed_item, history_row
from retryqueue.errors import InvalidArgument
from retryqueue.fingerprint import fingerprint
from retryqueue.policy import EXPIRED, EXPIRED_UNRUN, Decision, Outcome
from retryqueue.queue._base import _QueueBase
from retryqueue.queue._support import (
    UNDECRYPTABLE,
    _core,
    _database_errors,
    _has_returning,
    _run_emulated,
    _unless_past_deadline,
    _unless_past_expiry,
)
from retryqueue.results import ClaimedItem

logger = logging.getLogger("retryqueue.queue")

_STALE_RECLAIM_LIMIT = 1000


class _Claims(_QueueBase):
    """Claiming due items; reclaiming and expiring the ones nobody will run."""

    @_database_errors
    def acquire(
        self,
        session: Session,
        worker_id: str,
        batch_size: int = 10,
        lock_timeout: float = 300,
        *,
        reclaim_stale: bool = True,
        skip_keys: Collection[str] = (),
        only_key: str | None = None,
        per_event_type: bool = False,
    ) -> list[ClaimedItem]:
        """Claim up to ``batch_size`` due items for ``worker_id``, highest priority first.

        First, items whose lock has expired — held by any worker — are reclaimed (an
        attempt with history status ``lock_expired``). Then pending, due, unexpired items
        are locked with ``FOR UPDATE SKIP LOCKED``, so concurrent workers never receive the
        same item. Each claim gets a fresh lease token and expires ``lock_timeout`` seconds
        after it is stamped (unless heartbeats extend it): a lock's expiry is its holder's,
        so workers with different lock timeouts can share a queue. Locks taken before
        revision rq0006 (no stored expiry) expire after this call's ``lock_timeout``.
        Pending items past their expiry are dead-lettered here too (code ``EXPIRED``; see
        :meth:`expire`), a bounded batch each time.

        ``reclaim_stale=False`` skips the first step (one statement fewer): a worker that
        acquires many times a second reclaims on a timer instead (see the Worker).

        Circuit breaker (see :mod:`retryqueue.circuits`): items whose circuit key is in
        ``skip_keys`` (an open circuit's) stay pending, untouched; ``only_key`` claims
        only that key's items (a half-open circuit's probe, with ``batch_size=1``). The
        key is the item's plugin_name, or ``plugin_name:event_type`` with
        ``per_event_type=True``; items without a plugin_name are never skipped.

        Rate limits and pauses (see :mod:`retryqueue.limits`): no more of a limited key's
        items are claimed than its bucket's tokens, and paused keys' items are skipped.
        """
        worker_id = check.text("worker_id", worker_id)
        batch_size = check.bounded_int("batch_size", batch_size, low=1, high=10_000)
        lock_timeout = check.seconds("lock_timeout", lock_timeout, allow_zero=False)
        if isinstance(skip_keys, str):
            raise InvalidArgument("skip_keys", "expected a collection of keys, not one string")
        keys: dict[str, Any] = {  # the circuit filter of the claim
            "skip_keys": sorted(check.text("skip_keys", key, max_length=511) for key in skip_keys),
            "only_key": check.optional_text("only_key", only_key, max_length=511),
            "per_event_type": per_event_type,
        }
        keys["lock_timeout"] = lock_timeout
        at = self._locked_now(session)
        if reclaim_stale:
            self._reclaim_stale(session, at, lock_timeout)
            self._dead_letter_expired(session, at, _STALE_RECLAIM_LIMIT)
        token = uuid.uuid4()
        returning = _has_returning(session)

        def run(limit_filter: sql.KeyFilter | None, size: int) -> list[Any]:
            if returning:
                stmt, params = sql.claim(
                    at, worker_id, token, size, limit_filter=limit_filter, **keys
                )
                return list(_core(session).execute(stmt, params).all())
            # MySQL: SELECT ... SKIP LOCKED, UPDATE those ids, read them back
            emulation = sql.claim_emulated(
                at, worker_id, token, size, limit_filter=limit_filter, **keys
            )
            return list(_run_emulated(session, emulation))

        if self.limit_presence.active(session, at):  # rate limits or pauses in force
            rows = limits.claim_within_limits(session, at, batch_size, run)
        else:
            rows = run(None, batch_size)
        claimed = self._quarantine([claimed_item(row) for row in rows], session, at)
        claimed.sort(key=lambda item: (-item.priority, item.next_retry_at, item.id))
        return claimed

    def _quarantine(
        self, claimed: list[ClaimedItem], session: Session, at: datetime | None
    ) -> list[ClaimedItem]:
        """Dead-letter the claimed items whose event_data cannot be decrypted; the others.

        Such an item (sealed under a key this process lacks, or tampered) can never run
        here: it is charged one attempt and ends in dead_letter with error code
        ``UNDECRYPTABLE`` and the reason in its history row, so that it neither kills the
        worker nor comes back forever. Requeue it once the right key is configured.
        """
        runnable = []
        for item in claimed:
            data = item.event_data
            if not isinstance(data, encryption.Undecryptable):
                runnable.append(item)
                continue
            message = f"quarantined: event_data cannot be decrypted ({data.reason})"
            fields = {"item_id": item.id, "worker_id": item.locked_by, "error_code": UNDECRYPTABLE}
            decision = Decision(Outcome.DEAD_LETTERED, "dead_letter", item.retry_count + 1)
            guard = sql.owned_guard(item.id, item.lease_token)
            group = fingerprint(UNDECRYPTABLE, message)
            if self._apply(
                session, guard, at, decision, message, UNDECRYPTABLE, error_fingerprint=group
            ):
                self._write_attempt(
                    session,
                    at,
                    item,
                    Outcome.DEAD_LETTERED,
                    worker_id=item.locked_by,
                    error_message=message,
                    error_code=UNDECRYPTABLE,
                    error_fingerprint=group,
                )
            logger.error(
                "item %s %s",
                item.id,
                message,
                extra=fields,
            )
        return runnable

    def _locked_now(self, session: Session) -> datetime | None:
        """ "Now" for stamping locks, read once the transaction has begun.

        On SQLite the transaction's ``BEGIN IMMEDIATE`` waits for the write lock: the
        clock is read after that wait, so a claim is never born older than the wait.
        (On the server clock, the statements stamp the statement's own time.)
        """
        session.connection()  # begins the transaction (SQLite: takes the write lock)
        return self.now(session)

    def _reclaim_stale(self, session: Session, at: datetime | None, lock_timeout: float) -> int:
        stmt = sql.select_stale(at, lock_timeout, _STALE_RECLAIM_LIMIT)
        if not _has_returning(session):
            # MySQL: a locking scan of the status index takes next-key locks that deadlock
            # with concurrent claims; find candidates with a plain read, then lock by id.
            ids = list(session.scalars(sql.stale_ids(at, lock_timeout, _STALE_RECLAIM_LIMIT)))
            if not ids:
                return 0
            stmt = sql.select_stale(at, lock_timeout, _STALE_RECLAIM_LIMIT, only_ids=ids)
        stale = session.execute(stmt).all()
        history = []
        for row in stale:
            expired: str | None = f"lock held by {row.locked_by} expired"
            code: str | None = "LOCK_EXPIRED"
            if self.count_expired_locks:
                decision = self._decide(row, retryable=True, retry_after=None, policy=None)
                decision, expired, code = _unless_past_deadline(
                    row, self.policy, decision, expired, code, False
                )
            else:
                decision = Decision(Outcome.LOCK_EXPIRED, "pending", row.retry_count, timedelta(0))
            decision, reason = _unless_past_expiry(row, decision, expired)
            message = reason or expired
            guard = sql.reclaim_stale(row.id, at, lock_timeout)
            group = fingerprint(code, message)
            if self._apply(session, guard, at, decision, message, code, error_fingerprint=group):
                history.append(
                    history_row(
                        row.id,
                        row.event_id,
                        row.retry_count + 1,
                        Outcome.LOCK_EXPIRED,
                        worker_id=row.locked_by,
                        error_message=message,
                        error_code=code,
                        error_fingerprint=group,
                    )
                )
        self._write_history(session, at, history)
        return len(history)

    @_database_errors
    def expire(self, session: Session, *, limit: int = 1000) -> int:
        """Move up to ``limit`` pending items past their ``expires_at`` to ``dead_letter``.

        Such an item can never run; instead of vanishing at the next cleanup it becomes a
        dead letter with code :data:`~retryqueue.policy.EXPIRED` and an ``expired``
        history row, so that stats, alerts, metrics and dead-letter triage show it, and
        ``replay`` can bring it back with a new expiry. Workers do this on their stale-lock
        timer and :meth:`cleanup` before deleting anything. Returns how many moved.
        """
        limit = check.bounded_int("limit", limit, low=1, high=100_000)
        return self._dead_letter_expired(session, self.now(session), limit)

    def _dead_letter_expired(self, session: Session, at: datetime | None, limit: int) -> int:
        stmt = sql.lock_expired(at, limit)
        if not _has_returning(session):
            # MySQL: as for stale locks, find candidates by a plain read, then lock by id.
            ids = list(session.scalars(sql.expired_ids(at, limit)))
            if not ids:
                return 0
            stmt = sql.lock_expired(at, limit, only_ids=ids)
        rows = session.execute(stmt).all()
        if not rows:
            return 0
        group = fingerprint(EXPIRED, EXPIRED_UNRUN)
        session.execute(
            sql.dead_letter_expired(
                [row.id for row in rows],
                at,
                error_code=EXPIRED,
                message=EXPIRED_UNRUN,
                error_fingerprint=group,
            )
        )
        self._write_history(
            session,
            at,
            [
                history_row(
                    row.id,
                    row.event_id,
                    row.retry_count,
                    "expired",
                    error_message=EXPIRED_UNRUN,
                    error_code=EXPIRED,
                    error_fingerprint=group,
                )
                for row in rows
            ],
        )
        return len(rows)

    @_database_errors
    def seconds_until_due(self, session: Session) -> float | None:
        """Seconds until the earliest pending item is due (<= 0: due now); None if none."""
        row = session.execute(sql.next_due(self.now(session))).one()
        if row.next_due is None:
            return None
        return float((row.next_due - row.now).total_seconds())

    @_database_errors
    def seconds_until_claimable(
        self,
        session: Session,
        *,
        blocked: Mapping[str, float] | None = None,
        per_event_type: bool = False,
    ) -> float | None:
        """Seconds until the earliest item :meth:`acquire` could take is due; None if none.

        Like :meth:`seconds_until_due`, but expired and locked pending items, which acquire
        never takes, are ignored, so an idle worker does not keep waking for them.

        ``blocked`` maps open circuits' keys to the seconds until they may be probed (see
        :meth:`CircuitBreaker.probes_due_in`): their items count only from then on, so
        items held back by an open circuit do not make an idle worker poll. Likewise the
        items of paused keys (see :mod:`retryqueue.limits`) count only from the first
        pause's end.
        """
        at = self.now(session)
        keys = sorted(blocked or {})
        paused, first_resume = (
            limits.paused_keys(session, at)
            if self.limit_presence.active(session, at)
            else (None, None)
        )
        due = sql.next_claimable_due(at, keys, per_event_type=per_event_type, limit_filter=paused)
        row = session.execute(due).one()
        waits = [] if row.next_due is None else [(row.next_due - row.now).total_seconds()]
        if first_resume is not None:  # paused keys' items count from their pause's end
            waits.append(first_resume)
        if blocked and keys:
            by_key = sql.next_claimable_due_by_key(
                at, keys, per_event_type=per_event_type, limit_filter=paused
            )
            for held in session.execute(by_key):
                due = (held.next_due - held.now).total_seconds()
                waits.append(max(due, blocked[held.circuit_key]))
        return float(min(waits)) if waits else None
