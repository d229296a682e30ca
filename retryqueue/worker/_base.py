"""What the thread worker and the asyncio worker share: the steps of a round inside a
transaction, and the decisions around them (backoff, idle waits). Their settings are
checked in :mod:`retryqueue.worker._settings`; what a handler receives and the per-item
outcome guards are in :mod:`retryqueue.worker._attempts`; how outcomes are reported (tally,
logs, observers), in :mod:`retryqueue.worker._reporting`.

Every database step is a plain function of a Session (``_claim``, ``_write_outcomes``,
``_release``, ``_renew``, ``_due``): :class:`~retryqueue.worker.Worker` runs it inside
``sessionmaker.begin()``, :class:`~retryqueue.worker.async_worker.AsyncWorker` through
``AsyncSession.run_sync``. The outcome rules (:func:`~retryqueue.worker.failures.plan_failure`,
the queue's decisions), the waits, the logging and the observers therefore exist once.
Private; the public names are re-exported by :mod:`retryqueue.worker`.
"""

from __future__ import annotations

import logging
import time
from functools import partial

from sqlalchemy.orm import Session

from retryqueue.errors import DatabaseError
from retryqueue.registry import deregister_worker, register_worker, worker_heartbeat
from retryqueue.results import ClaimedItem
from retryqueue.worker._attempts import (
    health_of,
    pause_safely,
    plan_outcome_safely,
    record_failure_safely,
)
from retryqueue.worker._batch import Finished, by_token
from retryqueue.worker._pipeline import Pipeline, Step
from retryqueue.worker._reporting import Reporting
from retryqueue.worker._settings import WorkerSettings
from retryqueue.worker.failures import FailurePlan
from retryqueue.worker.listener import reconnect_delay

__all__ = ["WorkerBase"]

logger = logging.getLogger("retryqueue.worker")

MAX_BACKOFF = 30.0
_RECHECK_SOON = 0.25  # idle wait when something looked due but could not be taken
_RECLAIM_EVERY = 15.0  # upper bound between two looks for stale locks


class WorkerBase(WorkerSettings, Reporting):
    """The transaction bodies of a worker round, on its settings; see the module docstring."""

    # -- the worker registry (daz_retry_workers, see retryqueue.registry) -----------------

    registry_kind = "worker"
    """What the registry lists as this worker's kind."""

    def _registry_due(self) -> str | None:
        """The registry step due now: "register", then "beat" every heartbeat_interval."""
        now = time.monotonic()
        if not self._registry_on or now < self._next_registry:
            return None
        self._next_registry = now + self.heartbeat_interval
        return "beat" if self._registered else "register"

    def _registry_step(self, session: Session, step: str) -> None:
        """Body of one registry transaction: "register", "beat" or "leave"."""
        if step == "leave":
            deregister_worker(session, self.worker_id)
            return
        at = self.queue.now(session)
        if step == "beat" and worker_heartbeat(session, self.worker_id, at):
            return
        register_worker(
            session,
            self.worker_id,
            kind=self.registry_kind,
            concurrency=self.concurrency,
            batch_size=self.batch_size,
            at=at,
        )

    def _registry_done(self, step: str, error: DatabaseError | None) -> None:
        """Note a registry step's outcome. The registry only informs operators: a failed
        registration (e.g. the table is not migrated yet) turns it off for this worker."""
        if error is None:
            self._registered = step != "leave"
            return
        if step == "register":
            self._registry_on = False
        logger.warning(
            "worker registry %s failed%s: %s",
            step,
            "; this worker will not be listed" if step == "register" else "",
            error,
            extra={"worker_id": self.worker_id},
        )

    # -- the steps, each the body of one transaction ------------------------------------

    def _pipeline(self, dialect: str) -> Pipeline:
        """A fresh pipeline with this worker's batch size, prefetch, flush age, ready
        timeout and transactions in flight (``in_flight``; by default up to two on
        PostgreSQL, where each runs on its own connection, the second only while it pays
        (see :class:`~retryqueue.worker._pipeline.Governor`); one elsewhere: SQLite has one
        writer, and MySQL's gap locks make concurrent claims of one worker more likely to
        deadlock)."""
        depth = self.in_flight
        adaptive = depth is None  # the default adapts (see Governor); a number is fixed
        if depth is None:
            depth = 2 if dialect == "postgresql" else 1
        return Pipeline(
            self.batch_size, self.prefetch, self.flush_age, self.ready_timeout, depth, adaptive
        )

    def _single_statement(self, step: Step, plans: list[FailurePlan | None], dialect: str) -> bool:
        """True when ``step`` is the steady state that PostgreSQL records and claims in one
        statement (only completions, a claim, no circuit breaker, no stale-lock sweep due):
        such a flush needs no transaction of its own, so the driver runs it autocommitted
        (one round trip instead of BEGIN, statement, COMMIT). Decided before the step runs,
        and :meth:`_flush` is told, so the sweep cannot come due in between."""
        return (
            dialect == "postgresql"
            and bool(step.outcomes)
            and step.claim > 0
            and self.breaker is None
            and all(plan is None for plan in plans)
            and time.monotonic() < self._next_reclaim
        )

    def _flush(
        self,
        session: Session,
        finished: list[Finished],
        plans: list[FailurePlan | None],
        claim: int,
        single: bool = False,
    ) -> tuple[dict[int, str], list[ClaimedItem]]:
        """One pipeline transaction: record ``finished`` (with their history rows), then
        claim up to ``claim`` items (0: none).

        The steady state (only completions, a claim, no circuit breaker) is one call of
        :meth:`RetryQueue.complete_and_acquire`: one statement on PostgreSQL (``single``:
        the caller checked :meth:`_single_statement` and runs it autocommitted).
        """
        if single:
            return self._complete_and_claim(session, finished, claim, reclaim=False)
        if finished and claim and self.breaker is None and all(p is None for p in plans):
            reclaim = time.monotonic() >= self._next_reclaim
            return self._complete_and_claim(session, finished, claim, reclaim=reclaim)
        outcomes = self._write_outcomes(session, finished, plans) if finished else {}
        return outcomes, (self._claim(session, claim) if claim else [])

    def _complete_and_claim(
        self, session: Session, finished: list[Finished], claim: int, *, reclaim: bool
    ) -> tuple[dict[int, str], list[ClaimedItem]]:
        completed, claimed = self.queue.complete_and_acquire(
            session,
            [done.item for done in finished],
            self.worker_id,
            claim,
            self.lock_timeout,
            durations_ms=[done.duration_ms for done in finished],
            reclaim_stale=reclaim,
        )
        if reclaim:
            self._next_reclaim = time.monotonic() + min(self.lock_timeout / 4, _RECLAIM_EVERY)
        outcomes = {
            done.item.id: "completed" if done.item.id in completed else "lost" for done in finished
        }
        return outcomes, claimed

    def _claim(self, session: Session, size: int | None = None) -> list[ClaimedItem]:
        """Acquire a batch; stale locks are looked for a few times per lock_timeout.

        With a circuit breaker: the probes this worker won come first (one item each; a
        probe that finds nothing is given back), then a batch that skips open circuits.
        """
        reclaim = time.monotonic() >= self._next_reclaim
        size = self.batch_size if size is None else size
        claim = partial(self.queue.acquire, session, self.worker_id, lock_timeout=self.lock_timeout)
        if self.breaker is None:
            claimed = claim(size, reclaim_stale=reclaim)
        else:
            gate = self.breaker.gate(session, owner=self.worker_id)
            claimed = []
            for key in gate.probes:
                probe = claim(
                    1, reclaim_stale=False, only_key=key, per_event_type=gate.per_event_type
                )
                if not probe:
                    self.breaker.release_probe(session, key)
                claimed += probe
            room = size - len(claimed)
            claimed += (
                claim(
                    room,
                    reclaim_stale=reclaim,
                    skip_keys=gate.blocked,
                    per_event_type=gate.per_event_type,
                )
                if room > 0
                else []
            )
        if reclaim:
            self._next_reclaim = time.monotonic() + min(self.lock_timeout / 4, _RECLAIM_EVERY)
        if claimed:
            logger.debug("acquired %d items", len(claimed), extra={"worker_id": self.worker_id})
        return claimed

    def _plans(self, finished: list[Finished]) -> list[FailurePlan | None]:
        return [self._plan(done) for done in finished]

    def _plan(self, done: Finished) -> FailurePlan | None:
        """The one place an item's outcome is planned: None for a success, else how the
        failure is recorded."""
        return plan_outcome_safely(done, self.queue.policy)

    def _write_outcomes(
        self, session: Session, finished: list[Finished], plans: list[FailurePlan | None]
    ) -> dict[int, str]:
        """Record a group of outcomes: completions in one statement, then each failure."""
        successes = [f for f, plan in zip(finished, plans, strict=True) if plan is None]
        outcomes: dict[int, str] = {}
        completed = (
            self.queue.complete_many(
                session,
                [f.item for f in successes],
                durations_ms=[f.duration_ms for f in successes],
            )
            if successes
            else set()
        )
        for done in successes:
            outcomes[done.item.id] = "completed" if done.item.id in completed else "lost"
        for done, plan in zip(finished, plans, strict=True):
            if plan is None:
                continue
            key = self._pause_key(done.item, plan)
            outcomes[done.item.id] = (
                record_failure_safely(self.queue, session, done, plan)
                if key is None
                else pause_safely(self.queue, session, done, plan, key)
            )
        if self.breaker is not None:
            self.breaker.record(session, health_of(finished, plans, outcomes), actor=self.worker_id)
        return outcomes

    def _pause_key(self, item: ClaimedItem, plan: FailurePlan) -> str | None:
        """The key a ``RetryLater(..., pause_key=...)`` pauses: the named one, else the
        item's plugin (with its event type under a per-event-type breaker); None: no pause
        (none asked, or an item without a plugin)."""
        if plan.pause_key is False or plan.retry_after is None:
            return None
        if isinstance(plan.pause_key, str):
            return plan.pause_key
        if not item.plugin_name:
            return None
        if self.breaker is not None:
            return self.breaker.key_for(item.plugin_name, item.event_type)
        return item.plugin_name

    def _release(self, session: Session, items: list[ClaimedItem]) -> int:
        released = 0
        for token, ids in by_token(items).items():
            released += len(self.queue.release(session, self.worker_id, ids, lease_token=token))
        return released

    def _renew(self, session: Session, held: list[ClaimedItem]) -> set[int]:
        kept: set[int] = set()
        for token, ids in by_token(held).items():
            kept.update(
                self.queue.heartbeat(
                    session, self.worker_id, ids, lease_token=token, lock_timeout=self.lock_timeout
                )
            )
        return kept

    def _due(self, session: Session) -> float | None:
        if self.breaker is None:
            return self.queue.seconds_until_claimable(session)
        return self.queue.seconds_until_claimable(  # open circuits' items wait for a probe
            session,
            blocked=self.breaker.probes_due_in(session),
            per_event_type=self.breaker.per_event_type,
        )

    # -- decisions around the steps -------------------------------------------------------

    def _flush_failed(
        self, pipe: Pipeline, step: Step, failures: int, exc: DatabaseError
    ) -> list[Finished]:
        """A pipeline transaction failed: put its outcomes back and back off
        (``pipe.pause_until``); returns the outcomes given up on instead (their leases
        expired meanwhile: they count as lost). The caller holds the pipeline's locks."""
        if not step.outcomes:
            pipe.pause_until = time.monotonic() + self._outage_delay(failures, exc)
            return []
        delay = self._recording_delay(pipe.renewed_at, step.outcomes, failures, exc)
        if delay is None:
            pipe.forget(done.item.id for done in step.outcomes)
            return step.outcomes
        pipe.requeue_outcomes(step.outcomes)
        pipe.pause_until = time.monotonic() + delay
        return []

    def _after_claim(self, pipe: Pipeline, asked: int, claimed: int, idle_for: float) -> None:
        """After a claim that found fewer items than asked (the queue ran dry), the next
        waits ``idle_for`` (or a NOTIFY)."""
        if claimed < asked:
            pipe.claim_at = time.monotonic() + idle_for
            self._log_idle(idle_for)

    def _outage_delay(self, failures: int, exc: DatabaseError) -> float:
        """Capped, jittered backoff after ``failures`` failed rounds in a row (logged)."""
        return self._backing_off("database unavailable", reconnect_delay(failures), exc)

    def _recording_delay(
        self, renewed_at: float, finished: list[Finished], failing: int, exc: DatabaseError
    ) -> float | None:
        """How long to wait before recording again; None to give up (leases expired)."""
        if time.monotonic() - renewed_at > self.lock_timeout:
            logger.error(
                "giving up recording %d outcomes (leases expired): %s",
                len(finished),
                exc,
                extra={"worker_id": self.worker_id},
            )
            return None
        delay = min(MAX_BACKOFF, 0.25 * 2.0 ** (failing - 1))
        return self._backing_off("recording outcomes failed", delay, exc)

    def _backing_off(self, what: str, delay: float, exc: DatabaseError) -> float:
        logger.warning(
            "%s, retrying in %.1fs: %s",
            what,
            delay,
            exc,
            extra={"worker_id": self.worker_id, "backoff_s": delay},
        )
        return delay

    def _idle_for(self, due: float | None) -> float:
        """Seconds to sleep: until the next item is due, at most poll_interval."""
        if due is None:
            return self.poll_interval
        if due <= 0:
            return min(self.poll_interval, _RECHECK_SOON)
        return min(self.poll_interval, due + 0.01)
