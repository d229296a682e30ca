"""Both workers fingerprint what their handlers raise: one group per failure, not per value."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import RetryQueue
from retryqueue.fingerprint import fingerprint
from retryqueue.worker import Job, PermanentError, RunReport
from tests.worker.conftest import enqueue, new_worker

pytestmark = pytest.mark.usefixtures("worker_kind")


class UpstreamError(Exception):
    """An HTTP client's error, coded by its status."""

    code = "HTTP_503"


def call_upstream(job: Job) -> None:
    """Fails like a real HTTP call: the request id and order change, the failure does not."""
    order = job.event_data["n"]
    raise UpstreamError(
        f"503 Service Unavailable for /orders/{order * 97}/items (request id "
        f"req_{order * 7919 + 4096:x}) after {order + 0.5}s"
    )


def write_row(job: Job) -> None:
    """Fails like a database write on two different constraints."""
    order = job.event_data["n"]
    constraint = "orders_pkey" if order % 2 else "orders_reference_key"
    raise PermanentError(
        f'duplicate key value violates unique constraint "{constraint}"\n'
        f"DETAIL:  Key (id)=({order + 40}) already exists."
    )


def test_worker_failures_group_by_fingerprint(
    sessions: sessionmaker[Session], queue: RetryQueue
) -> None:
    ids = enqueue(sessions, queue, "order.sync", 4, max_retries=0, plugin_name="erp")
    ids += enqueue(sessions, queue, "order.write", 4, plugin_name="db")
    worker = new_worker(
        queue,
        sessions,
        {"order.sync": call_upstream, "order.write": write_row},
        listen=False,
        batch_size=8,
    )
    assert worker.run_once() == RunReport(acquired=8, dead_lettered=4, failed=4)
    with sessions() as session:
        groups = queue.error_groups(session)
        history = {item_id: queue.history(session, item_id) for item_id in ids}
    assert [(group.error_code, group.count, group.plugins) for group in groups] == [
        ("HTTP_503", 4, ("erp",)),
        ("PermanentError", 2, ("db",)),
        ("PermanentError", 2, ("db",)),
    ]
    assert groups[0].pattern == (
        "503 Service Unavailable for /orders/<id>/items (request id <id>) after <n>s"
    )
    assert {group.pattern.split('"')[1] for group in groups[1:]} == {
        "orders_pkey",
        "orders_reference_key",
    }
    for entries in history.values():
        (entry,) = entries
        assert entry.error_fingerprint == fingerprint(entry.error_code, entry.error_message)
    assert {entry.error_fingerprint for (entry,) in history.values()} == {
        group.fingerprint for group in groups
    }
