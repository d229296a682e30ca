"""The worker registry: workers register, heartbeat and leave; the Workers page and CLI."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient

from retryqueue import ManualClock, RetryQueue
from retryqueue.models import RetryWorker
from retryqueue.registry import (
    DEAD_AFTER_SECONDS,
    STOPPED,
    deregister_worker,
    live_workers,
    register_worker,
    worker_heartbeat,
)
from tests.cli.conftest import invoke_cli
from tests.support.waiting import wait_until
from tests.web.conftest import Seeded
from tests.worker.conftest import new_worker, running, worker_kind  # noqa: F401 (fixture)


def listed(sessions: sessionmaker[Session], at: datetime | None = None) -> list[str]:
    """The worker ids the listing (Workers page, ``retryqueue workers``) shows at ``at``."""
    with sessions() as session:
        when = RetryQueue().now(session) if at is None else at
        return [info.worker_id for info in live_workers(session, when)]


def registered(sessions: sessionmaker[Session]) -> dict[str, RetryWorker]:
    """The registry's rows by worker id."""
    with sessions() as session:
        return {row.worker_id: row for row in session.scalars(select(RetryWorker))}


class TestRegistry:
    """register / heartbeat / deregister, pruning, and the listing's figures."""

    def test_lifecycle_without_delete_then_cleanup(self, sessions: sessionmaker[Session]) -> None:
        start = datetime(2026, 11, 29, 5, 0, tzinfo=UTC)
        with sessions.begin() as session:
            register_worker(session, "w1", kind="threaded", concurrency=4, batch_size=20, at=start)
            register_worker(session, "w2", kind="asyncio", concurrency=1, batch_size=5, at=start)
        row = registered(sessions)["w1"]
        assert (row.host, row.pid, row.kind) == (socket.gethostname(), os.getpid(), "threaded")
        assert (row.concurrency, row.batch_size) == (4, 20)
        later = start + timedelta(seconds=DEAD_AFTER_SECONDS + 1)
        with sessions.begin() as session:  # w2 fell silent: no longer listed, row kept
            assert worker_heartbeat(session, "w1", later)
        assert listed(sessions, later) == ["w1"]
        assert sorted(registered(sessions)) == ["w1", "w2"]
        assert registered(sessions)["w1"].heartbeat_at == later
        with sessions.begin() as session:  # a new run of w2 updates the old row in place
            register_worker(session, "w2", kind="threaded", concurrency=8, batch_size=1, at=later)
        again = registered(sessions)["w2"]
        assert (again.kind, again.concurrency, again.started_at) == ("threaded", 8, later)
        assert listed(sessions, later) == ["w1", "w2"]
        with sessions.begin() as session:  # leaving is an UPDATE: hidden at once
            deregister_worker(session, "w1")
            assert not worker_heartbeat(session, "gone", later)  # no row: register again
        assert listed(sessions, later) == ["w2"]
        assert registered(sessions)["w1"].heartbeat_at == STOPPED
        # Cleanup (the maintenance role) deletes the stopped row, and the silent one later.
        cleaner = RetryQueue(clock=ManualClock(later + timedelta(seconds=1)))
        with sessions.begin() as session:
            assert cleaner.cleanup(session, retention_days=1).worker_rows_deleted == 1
        assert sorted(registered(sessions)) == ["w2"]
        much_later = RetryQueue(
            clock=ManualClock(later + timedelta(seconds=DEAD_AFTER_SECONDS + 1))
        )
        with sessions.begin() as session:
            assert much_later.cleanup(session, retention_days=1).worker_rows_deleted == 1
        assert registered(sessions) == {}

    def test_listing_counts_held_items_and_the_last_hour(self, seeded: Seeded) -> None:
        now = datetime.now(UTC)
        with seeded.sessions.begin() as session:
            register_worker(session, "seed-worker", kind="threaded", concurrency=1, batch_size=9)
            register_worker(session, "silent", kind="threaded", concurrency=1, batch_size=9)
            session.execute(
                update(RetryWorker)
                .where(RetryWorker.worker_id == "silent")
                .values(heartbeat_at=now - timedelta(seconds=DEAD_AFTER_SECONDS + 5))
            )
        seeded.add("dead", 3, dead="boom")  # three failed attempts by seed-worker
        with seeded.sessions.begin() as session:
            seeded.queue.enqueue(session, "held", {})
            seeded.queue.acquire(session, "seed-worker")
        with seeded.sessions() as session:
            (info,) = live_workers(session, seeded.queue.now(session))
        assert info.worker_id == "seed-worker"
        assert (info.held, info.attempts_last_hour, info.failures_last_hour) == (1, 3, 3)


@pytest.mark.usefixtures("worker_kind")
class TestWorkers:
    """A running worker is listed; a stopped one is not."""

    def test_register_and_leave(self, sessions: sessionmaker[Session]) -> None:
        worker = new_worker(
            RetryQueue(), sessions, {}, worker_id="listed-1", concurrency=2, batch_size=7,
            poll_interval=0.05,
        )  # fmt: skip
        with running(worker) as handle:
            wait_until(lambda: "listed-1" in registered(sessions), what="registration")
            row = registered(sessions)["listed-1"]
            assert row.kind in ("threaded", "asyncio")
            assert (row.concurrency, row.batch_size) == (2, 7)
            assert listed(sessions) == ["listed-1"]
            handle.stop()
        assert listed(sessions) == []
        assert registered(sessions)["listed-1"].heartbeat_at == STOPPED


class TestPageAndCommand:
    """The Workers page and ``retryqueue workers`` show the registry."""

    def test_page(self, client: TestClient, sessions: sessionmaker[Session]) -> None:
        assert "no worker has heartbeated" in client.get("/workers").text
        with sessions.begin() as session:
            register_worker(session, "web-7", kind="asyncio", concurrency=3, batch_size=11)
        page = client.get("/workers").text
        assert "web-7" in page and "asyncio" in page and socket.gethostname() in page

    def test_command(self, engine: Any, sessions: sessionmaker[Session]) -> None:
        with sessions.begin() as session:
            register_worker(session, "cli-3", kind="threaded", concurrency=1, batch_size=2)
        url = engine.url.render_as_string(hide_password=False)
        result = invoke_cli(url, "workers", "--json")
        assert result.exit_code == 0, result.output
        assert '"worker_id": "cli-3"' in result.output

    def test_history_and_show_print_the_traceback(self, engine: Any, seeded: Seeded) -> None:
        (item_id,) = seeded.add("one", 1, dead="boom")
        url = engine.url.render_as_string(hide_password=False)
        history = invoke_cli(url, "history", str(item_id))
        assert history.exit_code == 0
        assert "builtins.ConnectionError" in history.output
        assert "Traceback (most recent call last)" in history.output
        show = invoke_cli(url, "show", str(item_id))
        assert "attempt 1 raised builtins.ConnectionError" in show.output
