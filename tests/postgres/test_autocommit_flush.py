"""The worker's steady flush on PostgreSQL runs autocommitted: one statement, one round trip.

What must still hold there: the completions, their history rows and the claim are one
statement (atomic by itself), and the rare extra writes of that flush (quarantining a
claimed item that cannot be decrypted) are still one transaction of their own.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import NewItem, RetryQueue, RetryStatus
from retryqueue.models import RetryHistory, RetryItem
from retryqueue.worker import Job, Worker
from tests.support.poison import add_undecryptable_item

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])


class TestAutocommittedFlush:
    """complete_and_acquire on an autocommitted connection, as the pipelined worker runs it."""

    def test_quarantine_in_an_autocommitted_flush_writes_item_and_history_together(
        self, engine: Engine, sessions: sessionmaker[Session]
    ) -> None:
        queue = RetryQueue()
        with sessions.begin() as session:
            done_id = queue.enqueue(session, "ok", {"n": 1}).id
        with sessions.begin() as session:
            (held,) = queue.acquire(session, "w", batch_size=1)
            now = queue.now(session) or session.scalar(select(RetryItem.created_at))
            assert now is not None
            forged_id = add_undecryptable_item(session, now)  # no key here can open it
        with engine.connect() as connection:
            solo = connection.execution_options(isolation_level="AUTOCOMMIT")
            with Session(bind=solo) as session:
                completed, claimed = queue.complete_and_acquire(
                    session, [held], "w", 10, reclaim_stale=False
                )
            # Nothing was left open: in a transaction now() would be its start, earlier
            # than this statement's own timestamp.
            assert solo.exec_driver_sql("select now() = statement_timestamp()").scalar_one()
        assert completed == {done_id} and claimed == []
        with sessions() as session:
            row = session.get_one(RetryItem, forged_id)
            assert row.status is RetryStatus.DEAD_LETTER
            assert row.last_error_code == "UNDECRYPTABLE"
            history = session.execute(
                select(RetryHistory.retry_queue_id, RetryHistory.status).order_by(RetryHistory.id)
            ).all()
        assert [tuple(h) for h in history] == [(done_id, "completed"), (forged_id, "dead_lettered")]

    def test_a_draining_worker_commits_no_transaction_per_steady_flush(
        self, engine: Engine, sessions: sessionmaker[Session]
    ) -> None:
        queue, total, batch = RetryQueue(), 300, 10
        with sessions.begin() as session:
            queue.enqueue_many(session, [NewItem("ok", {"n": n}) for n in range(total)])
        commits: list[object] = []
        event.listen(engine, "commit", commits.append)
        done = threading.Event()
        ran: list[int] = []

        def handler(job: Job) -> None:
            ran.append(job.id)
            if len(ran) == total:
                done.set()

        worker = Worker(
            queue, sessions, {"ok": handler}, batch_size=batch, listen=False, poll_interval=0.05
        )
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            assert done.wait(60), "the drain did not finish"
        finally:
            worker.stop()
            thread.join(60)
        with sessions() as session:
            left = session.scalar(
                select(func.count()).where(RetryItem.status != RetryStatus.COMPLETED)
            )
        assert left == 0
        # 30 batches recorded; with a transaction per flush there would be 30+ commits.
        # Those left: the first claim (it sweeps stale locks), claims with nothing to
        # record, the idle waits at the end, heartbeats and the worker registry.
        assert len(commits) < total // batch // 2, len(commits)


class TestCompletionPlan:
    """Completions find their rows by primary key, whatever the statistics say."""

    def test_completions_never_scan_the_partial_index_of_processing_rows(
        self, engine: Engine, sessions: sessionmaker[Session]
    ) -> None:
        queue = RetryQueue()
        with sessions.begin() as session:
            queue.enqueue_many(session, [NewItem("ok", {"n": n}) for n in range(5000)])
        for _ in range(50):  # churn: completed items leave dead entries in that index
            with sessions.begin() as session:
                claimed = queue.acquire(session, "w", batch_size=10)
                queue.complete_many(session, claimed)
        with engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE daz_retry_queue")  # ~no processing rows
        seen: list[tuple[str, Any]] = []

        def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
            if statement.startswith("WITH done AS"):  # complete + history, on PostgreSQL
                seen.append((statement, parameters))

        with sessions.begin() as session:
            claimed = queue.acquire(session, "w", batch_size=10)
            event.listen(engine, "before_cursor_execute", capture)
            try:
                queue.complete_many(session, claimed)  # the statement a worker's flush runs
            finally:
                event.remove(engine, "before_cursor_execute", capture)
            [(statement, parameters)] = seen
            explained = session.connection().exec_driver_sql(f"EXPLAIN {statement}", parameters)
            plan = "\n".join(line for (line,) in explained)
        assert "daz_retry_queue_pkey" in plan, plan
        assert "idx_retry_queue_lock_expires" not in plan, plan

    def test_the_steady_flush_is_planned_once_not_per_batch(
        self, engine: Engine, sessions: sessionmaker[Session]
    ) -> None:
        """psycopg prepares the flush after a few runs; PostgreSQL then uses one generic
        plan instead of planning each batch anew (a third of the statement's time). It
        does so only if the generic plan is as good as a custom one: with the claim's LIMIT
        a parameter it guessed 10% of the table and chose a sequential scan, and kept
        re-planning forever."""
        queue = RetryQueue()
        with sessions.begin() as session:
            queue.enqueue_many(session, [NewItem("ok", {"n": n}) for n in range(20_000)])
        with engine.connect() as connection:
            solo = connection.execution_options(isolation_level="AUTOCOMMIT")
            solo.exec_driver_sql("ANALYZE daz_retry_queue")  # the planner knows the size
            with Session(bind=solo) as session:
                held = queue.acquire(session, "w", batch_size=10)
            for _ in range(20):
                with Session(bind=solo) as session:
                    _, held = queue.complete_and_acquire(
                        session, held, "w", 10, reclaim_stale=False
                    )
            plans = solo.exec_driver_sql(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE 'WITH done AS%%'"
            ).one()
        generic, custom = plans
        assert generic >= 10 and custom <= 5, plans
