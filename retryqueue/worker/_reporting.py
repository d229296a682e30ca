"""How a worker reports what it did: the run's tally, one log line per outcome (built only
when its level is enabled), the observers, and the lines a worker's life writes (start,
stop, signals, idle waits, lost leases, failed heartbeats). Mixed into
:class:`~retryqueue.worker._base.WorkerBase`; private.
"""

from __future__ import annotations

import logging
import time

from retryqueue._frozen import builder
from retryqueue.errors import DatabaseError
from retryqueue.results import ClaimedItem
from retryqueue.worker._attempts import (
    LOG_LEVEL,
    REPORT_FIELD,
    AttemptResult,
    Observer,
    fields_of,
)
from retryqueue.worker._batch import Finished
from retryqueue.worker._pipeline import Pipeline
from retryqueue.worker.failures import FailurePlan
from retryqueue.worker.routing import Router

__all__ = ["Reporting"]

logger = logging.getLogger("retryqueue.worker")

_attempt_result = builder(AttemptResult)  # built once per attempt while observed


class Reporting:
    """The reporting half of a worker (the settings below are set by the worker)."""

    worker_id: str
    observers: tuple[Observer, ...]
    router: Router
    batch_size: int
    concurrency: int
    lock_timeout: float

    def _log_idle(self, seconds: float) -> None:
        logger.debug(
            "idle for up to %.2fs", seconds, extra={"worker_id": self.worker_id, "wait_s": seconds}
        )

    def _report_all(
        self,
        finished: list[Finished],
        plans: list[FailurePlan | None],
        outcomes: dict[int, str],
        tally: dict[str, int],
    ) -> None:
        for done, plan in zip(finished, plans, strict=True):
            self._report(
                done,
                outcomes[done.item.id],
                plan.code if plan else None,
                tally,
                message=plan.message if plan else None,
            )

    def _report(
        self,
        done: Finished,
        outcome: str,
        code: str | None,
        tally: dict[str, int],
        *,
        message: str | None = None,
    ) -> None:
        key = REPORT_FIELD[outcome]
        tally[key] = tally.get(key, 0) + 1
        item = done.item
        if logger.isEnabledFor(LOG_LEVEL[outcome]):  # else skip building the log record
            self._log_outcome(done, outcome, code, message)
        if not self.observers:
            return
        result = _attempt_result(  # AttemptResult's fields, in order
            item.id,
            item.event_type,
            item.plugin_name,
            item.attempt,
            outcome,
            done.duration_seconds,
            code,
        )
        for observer in self.observers:
            try:
                observer(result)
            except Exception:
                logger.warning(
                    "observer %r failed",
                    observer,
                    exc_info=True,
                    extra={"worker_id": self.worker_id},
                )

    def _log_outcome(
        self, done: Finished, outcome: str, code: str | None, message: str | None
    ) -> None:
        item = done.item
        extra = fields_of(
            item,
            self.worker_id,
            outcome=outcome,
            duration_ms=done.duration_ms,
            error_code=code,
            error_message=message,
        )
        if outcome == "lost":
            logger.warning(
                "item %s: lease lost, outcome refused (another worker owns it)",
                item.id,
                extra=extra,
            )
        else:
            logger.log(
                LOG_LEVEL[outcome],
                "item %s (%s) attempt %d: %s in %d ms%s%s",
                item.id,
                item.event_type,
                item.attempt,
                outcome,
                done.duration_ms,
                f" [{code}]" if code else "",
                f": {message[:200]}" if message else "",
                extra=extra,
            )

    def _report_abandoned(self, items: list[ClaimedItem], tally: dict[str, int]) -> None:
        for item in items:
            logger.warning(
                "shutdown grace ran out; item %s left to expire",
                item.id,
                extra=fields_of(item, self.worker_id, outcome="abandoned"),
            )
            tally["abandoned"] = tally.get("abandoned", 0) + 1

    def _report_released(
        self,
        ids: list[int],
        released: int | DatabaseError,
        tally: dict[str, int],
        why: str = "unstarted",
    ) -> None:
        if isinstance(released, DatabaseError):
            logger.warning(
                "could not release %d unstarted items; they return after lock_timeout: %s",
                len(ids),
                released,
                extra={"worker_id": self.worker_id},
            )
            return
        tally["released"] = tally.get("released", 0) + released
        logger.info(
            "released %d %s items",
            released,
            why,
            extra={"worker_id": self.worker_id, "item_ids": ids},
        )

    def _note_renewal(self, pipe: Pipeline, held: list[ClaimedItem], kept: set[int]) -> None:
        """After a heartbeat: note the time, log leases lost while their handler runs."""
        pipe.renewed_at = time.monotonic()
        for item in pipe.mark_lost(item for item in held if item.id not in kept):
            logger.warning(
                "item %s: lease lost while its handler runs",
                item.id,
                extra=fields_of(item, self.worker_id, outcome="lost"),
            )

    def _log_started(self) -> None:
        """One line when a worker starts, so that an idle worker is not silent."""
        logger.info(
            "worker %s started: routes %s, batch_size %d, concurrency %d, lock_timeout %gs",
            self.worker_id,
            self.router,
            self.batch_size,
            self.concurrency,
            self.lock_timeout,
            extra={"worker_id": self.worker_id},
        )

    def _log_stopped(self) -> None:
        logger.info("worker stopped", extra={"worker_id": self.worker_id})

    def _log_signal(self, name: str) -> None:
        logger.info(
            "%s received, shutting down", name, extra={"worker_id": self.worker_id, "signal": name}
        )

    def _log_heartbeat_failed(self, exc: DatabaseError) -> None:
        logger.warning("heartbeat failed: %s", exc, extra={"worker_id": self.worker_id})

    def _log_due_unknown(self, exc: DatabaseError) -> None:
        logger.debug("could not read the next due time: %s", exc)
