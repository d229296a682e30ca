"""OTel metrics: the counts agree with the history table; queue depth per status."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import RetryQueue
from retryqueue.models import RetryHistory
from retryqueue.testing import drain
from retryqueue.worker import Job, PermanentError
from tests.otel.conftest import Telemetry


def handler(job: Job) -> None:
    """Outcome by payload: ok, flaky (fails once), broken (always fails), permanent."""
    kind = job.event_data["kind"]
    if kind == "flaky" and job.attempt == 1:
        raise TimeoutError("slow upstream")
    if kind == "broken":
        raise ConnectionError("down")
    if kind == "permanent":
        raise PermanentError("bad request")


def test_attempt_counts_equal_the_history_table(
    telemetry: Telemetry, sessions: sessionmaker[Session], queue: RetryQueue
) -> None:
    kinds = ["ok"] * 3 + ["flaky"] * 2 + ["broken"] * 2 + ["permanent"]
    with sessions.begin() as session:
        for kind in kinds:
            queue.enqueue(session, "job", {"kind": kind}, max_retries=2, retry_delay_seconds=0)
    with sessions.begin() as session:
        drain(queue, session, {"job": handler})
    with sessions() as session:
        rows = session.execute(
            select(RetryHistory.status, func.count()).group_by(RetryHistory.status)
        )
        history = Counter({str(status): int(count) for status, count in rows})
    counted: Counter[str] = Counter()
    for attributes, value in telemetry.counts("retryqueue.worker.attempts").items():
        counted[dict(attributes)["outcome"]] += int(value)
    assert counted == history
    assert counted == {"completed": 5, "retry_scheduled": 6, "dead_lettered": 2, "failed": 1}
    durations = sum(telemetry.counts("retryqueue.worker.handler.duration").values())
    latencies = sum(telemetry.counts("retryqueue.worker.claim.latency").values())
    assert durations == latencies == history.total()


def test_queue_depth_per_status(
    telemetry: Telemetry, sessions: sessionmaker[Session], queue: RetryQueue
) -> None:
    with sessions.begin() as session:
        for kind in ("ok", "ok", "broken"):
            queue.enqueue(session, "job", {"kind": kind}, max_retries=0)
    with sessions.begin() as session:
        drain(queue, session, {"job": handler})
        queue.enqueue(session, "job", {"kind": "ok"}, delay=3600)
    depth = {dict(k)["status"]: v for k, v in telemetry.counts("retryqueue.items").items()}
    assert depth == {
        "pending": 1,
        "processing": 0,
        "completed": 2,
        "failed": 0,
        "dead_letter": 1,
    }
