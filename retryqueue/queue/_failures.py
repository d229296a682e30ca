"""Failed attempts: :meth:`~retryqueue.queue.RetryQueue.fail`,
:meth:`~retryqueue.queue.RetryQueue.record_failure` and
:meth:`~retryqueue.queue.RetryQueue.pause_item_key` (an attempt that pauses its key).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy.orm import Session

from retryqueue import hooks, limits
from retryqueue import statements as sql
from retryqueue import validation as check
from retryqueue._rows import failure_forensics, lease_of
from retryqueue.errors import InvalidArgument
from retryqueue.fingerprint import fingerprint
from retryqueue.policy import Decision, Outcome, RetryPolicy
from retryqueue.queue._base import _QueueBase
from retryqueue.queue._support import (
    _database_errors,
    _guard,
    _merged,
    _unless_past_deadline,
    _unless_past_expiry,
)
from retryqueue.results import ClaimedItem


class _Failures(_QueueBase):
    """Recording failed (or paused) attempts under the policy's decision."""

    def fail(
        self,
        session: Session,
        item: ClaimedItem | int,
        worker_id: str | None = None,
        error_message: str | None = None,
        error_code: str | None = None,
        *,
        lease_token: uuid.UUID | None = None,
        retryable: bool = True,
        retry_after: float | timedelta | None = None,
        duration_ms: int | None = None,
        policy: RetryPolicy | None = None,
        force: bool = False,
        exception_type: str | None = None,
        error_traceback: str | None = None,
    ) -> bool:
        """Record a failed attempt; the lease holder only, as for :meth:`complete`.

        Retryable failures go back to pending with retry_count + 1, due after the backoff
        delay (or ``retry_after``), until retry_count has reached max_retries: then the item
        is dead-lettered. A retry that would fall after the item's ``expires_at`` is not
        scheduled: the item is dead-lettered at once, and its message says so (see
        :data:`~retryqueue.policy.RETRY_PAST_EXPIRY`). Likewise past the item's
        ``retry_deadline`` (or the policy's ``retry_for`` from ``created_at``): a backoff
        retry is moved up to the deadline while time is left, else the item is
        dead-lettered with code :data:`~retryqueue.policy.DEADLINE_REACHED`.
        ``retryable=False`` marks it ``failed`` at once. ``retry_after`` is at most 10 years
        (:data:`~retryqueue.policy.MAX_DELAY_SECONDS`). Returns False, changing nothing, if
        the lease was lost. ``force=True``: the operator's path, as for :meth:`complete`
        (``retryqueue fail ID``).

        The attempt's history row keeps ``exception_type`` (at most 255 characters) and
        ``error_traceback`` (its last :data:`TRACEBACK_LIMIT` characters), and both the item
        and the history row get the failure's :func:`~retryqueue.fingerprint.fingerprint`.
        """
        return (
            self.record_failure(
                session,
                item,
                worker_id,
                error_message,
                error_code,
                lease_token=lease_token,
                retryable=retryable,
                retry_after=retry_after,
                duration_ms=duration_ms,
                policy=policy,
                force=force,
                exception_type=exception_type,
                error_traceback=error_traceback,
            )
            is not None
        )

    @_database_errors
    def record_failure(
        self,
        session: Session,
        item: ClaimedItem | int,
        worker_id: str | None = None,
        error_message: str | None = None,
        error_code: str | None = None,
        *,
        lease_token: uuid.UUID | None = None,
        retryable: bool = True,
        retry_after: float | timedelta | None = None,
        duration_ms: int | None = None,
        policy: RetryPolicy | None = None,
        force: bool = False,
        exception_type: str | None = None,
        error_traceback: str | None = None,
    ) -> Outcome | None:
        """:meth:`fail`, returning what became of the attempt (None: the lease was lost).

        The outcome is the one recorded under the row lock, e.g. ``DEAD_LETTERED`` for a
        retry that would fall after the item's expiry.
        """
        item_id, actor, token = lease_of(item, worker_id, lease_token, force=force)
        if error_message is not None and not isinstance(error_message, str):
            raise InvalidArgument("error_message", "expected a string")
        if error_message is not None:
            check.text("error_message", error_message, max_length=1_000_000)
        error_code = check.optional_text("error_code", error_code, max_length=50)
        retryable = check.flag("retryable", retryable)
        duration_ms = check.optional_duration_ms("duration_ms", duration_ms)
        forensics = failure_forensics(error_code, error_message, exception_type, error_traceback)
        wait = (
            None
            if retry_after is None
            else timedelta(seconds=check.seconds("retry_after", retry_after))
        )
        at = self.now(session)
        guard = _guard(item_id, token)
        row = session.execute(sql.lock_owned(guard, at=at)).first()
        decision: Decision | None = None
        if row is not None:
            decision = self._decide(row, retryable=retryable, retry_after=wait, policy=policy)
            decision, error_message, error_code = _unless_past_deadline(
                row, policy or self.policy, decision, error_message, error_code, wait is not None
            )
            decision, error_message = _unless_past_expiry(row, decision, error_message)
            # The group of what is stored: a refused retry's code and message are rewritten.
            forensics["error_fingerprint"] = fingerprint(error_code, error_message)
        applied = decision is not None and self._apply(
            session,
            guard,
            at,
            decision,
            error_message,
            error_code,
            error_fingerprint=forensics["error_fingerprint"],
        )
        if (hook := hooks.active) is not None and isinstance(item, ClaimedItem):
            self._traced_failure(session, hook, item, decision if applied else None)
        if not applied or decision is None:
            return None
        self._write_attempt(
            session,
            at,
            row,
            decision.outcome,
            worker_id=actor,
            error_message=error_message,
            error_code=error_code,
            duration_ms=duration_ms,
            **forensics,
        )
        return decision.outcome

    @staticmethod
    def _traced_failure(
        session: Session, hook: hooks.Instrumentation, item: ClaimedItem, decision: Decision | None
    ) -> None:
        """Tell the instrumentation about a failure (None: refused); store what it returns."""
        if decision is None:
            hook.outcome(item, "lost", None)
            return
        extra = hook.outcome(item, decision.outcome.value, decision.delay)
        if extra:
            merged = _merged(item.event_metadata, extra)
            session.execute(sql.set_metadata(), [{"item_id": item.id, "new_metadata": merged}])

    @_database_errors
    def pause_item_key(
        self,
        session: Session,
        item: ClaimedItem,
        key: str,
        seconds: float | timedelta,
        *,
        error_message: str | None = None,
        error_code: str | None = None,
        duration_ms: int | None = None,
    ) -> bool:
        """The handler of ``item`` learnt that ``key``'s destination is saturated: pause the
        key for ``seconds`` and put the item back, due when the pause ends, **without**
        counting the attempt (retry_count and backoff unchanged; a history row with status
        ``paused`` records it). False, changing nothing, if the item's lease was lost."""
        wait = check.seconds("seconds", seconds, allow_zero=False, maximum=limits.MAX_PAUSE_SECONDS)
        at = self.now(session)
        guard = sql.owned_guard(item.id, item.lease_token)
        decision = Decision(Outcome.PAUSED, "pending", item.retry_count, timedelta(seconds=wait))
        applied = self._apply(session, guard, at, decision, error_message, error_code)
        if (hook := hooks.active) is not None:
            self._traced_failure(session, hook, item, decision if applied else None)
        if not applied:
            return False
        self.limit_presence.invalidate()
        limits.pause_key(session, at, key, seconds=wait, reason=error_code or limits.REASON_PAUSED)
        self._write_attempt(
            session,
            at,
            item,
            Outcome.PAUSED,
            worker_id=item.locked_by,
            error_message=error_message,
            error_code=error_code,
            duration_ms=duration_ms,
        )
        return True
