"""enqueue_many on PostgreSQL with psycopg 3: COPY into a staging table, then one INSERT."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import ManualClock, NewItem, RetryQueue
from retryqueue.models import RetryItem

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])


def statements_seen(engine: Engine) -> list[str]:
    """The SQL texts ``engine`` runs from now on."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    return seen


class TestCopyEnqueue:
    """The COPY path keeps idempotency, input order and every field, twice in one transaction."""

    @pytest.mark.parametrize("clocked", [False, True], ids=["server-clock", "python-clock"])
    def test_two_calls_in_one_transaction_with_duplicates(
        self, engine: Engine, sessions: sessionmaker[Session], clocked: bool
    ) -> None:
        clock = ManualClock(datetime(2030, 1, 1, tzinfo=UTC)) if clocked else None
        queue = RetryQueue(clock=clock)
        seen = statements_seen(engine)
        ids = [uuid.uuid4() for _ in range(3)]
        first = [
            NewItem("a", {"n": 0}, event_id=ids[0], tags=("x", "y"), event_metadata={"k": "v"}),
            NewItem("a", {"n": 1}, event_id=ids[1], priority=7, delay=timedelta(seconds=30)),
            NewItem("a", {"n": 2}, event_id=ids[0]),  # a repeat inside the call
        ]
        second = [NewItem("b", {"n": 3}, event_id=ids[2]), NewItem("b", {"n": 4}, event_id=ids[1])]
        padding = [NewItem("pad", {"n": n}) for n in range(60)]  # COPY is for bulks only
        with sessions.begin() as session:
            one = queue.enqueue_many(session, first + padding)[:3]
            two = queue.enqueue_many(session, second + padding)[:2]
        assert sum("FROM rq_enqueue_staging" in text for text in seen) == 2  # the COPY path
        assert [(r.event_id, r.created) for r in one] == [
            (ids[0], True),
            (ids[1], True),
            (ids[0], False),
        ]
        assert one[0].id == one[2].id
        assert [(r.event_id, r.created) for r in two] == [(ids[2], True), (ids[1], False)]
        assert two[1].id == one[1].id
        with sessions() as session:
            rows = {row.event_id: row for row in session.scalars(select(RetryItem))}
        assert len(rows) == 3 + 2 * 60
        tagged, delayed, later = rows[ids[0]], rows[ids[1]], rows[ids[2]]
        assert (tagged.event_data, tagged.tags, tagged.event_metadata) == (
            {"n": 0},
            ["x", "y"],
            {"k": "v"},
        )
        assert (delayed.priority, delayed.event_data) == (7, {"n": 1})
        assert delayed.next_retry_at - delayed.created_at == timedelta(seconds=30)
        assert later.event_type == "b"
        if clock is not None:
            assert tagged.created_at == clock.now()

    def test_a_failed_call_leaves_nothing_behind_for_the_next_transaction(
        self, sessions: sessionmaker[Session]
    ) -> None:
        queue = RetryQueue()
        with sessions() as session:  # the caller rolls back
            queue.enqueue_many(session, [NewItem("a", {"n": n}) for n in range(60)])
            session.rollback()
        with sessions.begin() as session:
            again = queue.enqueue_many(session, [NewItem("a", {"n": 9})])
        with sessions() as session:
            assert [row.id for row in session.scalars(select(RetryItem))] == [again[0].id]

    def test_a_few_rows_skip_the_staging_table(
        self, engine: Engine, sessions: sessionmaker[Session]
    ) -> None:
        seen = statements_seen(engine)
        with sessions.begin() as session:
            RetryQueue().enqueue_many(session, [NewItem("a", {"n": n}) for n in range(3)])
        assert not any("rq_enqueue_staging" in text for text in seen)
