"""Clock skew: a worker whose host clock is an hour off neither runs early nor steals locks.

The skewed workers run under libfaketime (``LD_PRELOAD=libfaketime.so.1 FAKETIME=+1h``,
what the ``faketime -f +1h`` command sets up; the command itself is not used because it
forks, so signals sent to it never reach the worker). Each worker checks at start-up that
its ``datetime.now()`` really differs from the database server's clock by about that much,
so a libfaketime that silently did nothing fails the test instead of passing it. Monotonic
clocks are left alone (``FAKETIME_DONT_FAKE_MONOTONIC=1``): the worker's timeouts and waits
are not under test, and with an uptime under an hour a faked one would be negative.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import URL

from retryqueue import RetryQueue, RetryStatus
from retryqueue.models import RetryItem
from tests.reliability.fleet import Database, Fleet, WorkerProcess, history_by_item
from tests.reliability.worker_script import HOLD, WORK
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

HOUR = 3600
LOCK_TIMEOUT = 4
LIBFAKETIME = next(
    (
        path
        for pattern in (
            "/usr/lib/*/faketime/libfaketime.so.1",
            "/usr/*lib*/faketime/libfaketime.so.1",
        )
        for path in sorted(Path("/").glob(pattern.lstrip("/")))
    ),
    None,
)
needs_faketime = pytest.mark.skipif(
    LIBFAKETIME is None,
    reason="libfaketime is not installed (Debian: apt-get install faketime)",
)


def skewed(fleet: Fleet, name: str, offset: str, seconds: int, **options: object) -> WorkerProcess:
    """A worker process under libfaketime with ``FAKETIME=offset``: ``seconds`` off."""
    assert LIBFAKETIME is not None
    worker = fleet.start(
        name,
        env={
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME": offset,
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        },
        expect_skew=seconds,
        **options,
    )
    fleet.wait_ready([worker])
    skew = worker.ready()["skew"]  # type: ignore[index]
    assert abs(skew - seconds) < 300, f"{name}: clock off by {skew:.0f}s, not {seconds}s"
    return worker


def enqueue(db: Database, event_type: str, n: int, **fields: object) -> int:
    """One item; its id. ``delay`` is counted on the database server's clock."""
    with db.sessions.begin() as session:
        data: dict[str, object] = {"n": n}
        if event_type == HOLD:
            data["release"] = fields.pop("release")
        fields.setdefault("retry_delay_seconds", 0)
        return RetryQueue().enqueue(session, event_type, data, **fields).id


def row(db: Database, item_id: int) -> RetryItem:
    """An item's row, freshly read."""
    with db.sessions() as session:
        return session.get_one(RetryItem, item_id)


def server_now(engine: Engine) -> datetime:
    """The database server's clock."""
    with engine.connect() as connection:
        return connection.scalar(select(text("now()")))  # type: ignore[no-any-return]


def completed_by(db: Database, item_id: int, worker: str) -> Callable[[], bool]:
    """A condition: the item has been completed by this worker."""

    def done() -> bool:
        rows = history_by_item(db.engine).get(item_id, [])
        return any(status == "completed" and by == worker for _, status, by in rows)

    return done


@needs_faketime
class TestClockSkew:
    """Due times and lock ages are judged on the database's clock, not the worker host's."""

    def test_an_hour_fast_worker_neither_runs_early_nor_steals_a_live_lock(
        self, dedicated_db: Database, make_fleet: Callable[[URL], Fleet], tmp_path: Path
    ) -> None:
        db, fleet = dedicated_db, make_fleet(dedicated_db.url)
        release = tmp_path / "release-held-item"
        future = enqueue(db, WORK, 1, delay=30 * 60)
        held = enqueue(db, HOLD, 2, release=str(release))
        honest = fleet.start("honest", batch_size=1, lock_timeout=LOCK_TIMEOUT, heartbeat=1)
        wait_until(lambda: row(db, held).locked_by == "honest", timeout=60, what="lock taken")
        locked_at = row(db, held).locked_at
        assert locked_at is not None

        fast = skewed(fleet, "fast", "+1h", +HOUR, lock_timeout=LOCK_TIMEOUT, poll=0.2)
        soon = enqueue(db, WORK, 3, delay=2)
        probes = 0
        # Keep the fast worker busy with due items until the held lock has lived three
        # lock timeouts (on the server's clock): it kept acquiring, and reclaiming, all along.
        while (server_now(db.engine) - locked_at).total_seconds() < 3 * LOCK_TIMEOUT:
            probes += 1
            probe = enqueue(db, WORK, 100 + probes)
            wait_until(completed_by(db, probe, "fast"), timeout=30, what="+1h worker, probe")
            held_row, future_row = row(db, held), row(db, future)
            assert held_row.locked_by == "honest", f"+1h worker stole a live lock: {held_row}"
            assert future_row.last_attempted_at is None, "+1h worker took an item 30 min early"
        wait_until(completed_by(db, soon, "fast"), timeout=30, what="+1h worker, soon item")
        release.touch()
        wait_until(
            lambda: row(db, held).status is not RetryStatus.PROCESSING,
            timeout=30,
            what="the held item finishing",
        )
        fast.terminate()
        honest.terminate()

        history = history_by_item(db.engine)
        assert history[held] == [(1, "completed", "honest")], "the live lock was stolen"
        assert held not in {r.item_id for r in fast.executions()}
        soon_row = row(db, soon)
        assert soon_row.last_attempted_at is not None
        assert soon_row.last_attempted_at >= soon_row.next_retry_at, "taken before it was due"
        future_row = row(db, future)
        assert future_row.status is RetryStatus.PENDING and future_row.locked_by is None
        assert future not in history and future_row.last_attempted_at is None
        assert future not in {r.item_id for r in fleet.executions()}
        print(
            f"\n[reliability] clock skew +1h: probes={probes} held_lock_age>="
            f"{3 * LOCK_TIMEOUT}s stolen=0 taken_early=0"
        )

    def test_an_hour_slow_worker_takes_due_items_and_reclaims_expired_locks(
        self, dedicated_db: Database, make_fleet: Callable[[URL], Fleet]
    ) -> None:
        db, fleet = dedicated_db, make_fleet(dedicated_db.url)
        future = enqueue(db, WORK, 1, delay=30 * 60)
        # A lock left by a worker that died: nobody heartbeats it. Its 2 s lease is stored
        # with the claim (rq0006), so it expires by the ghost's lock_timeout, not the slow
        # worker's.
        abandoned = enqueue(db, WORK, 2)
        with db.sessions.begin() as session:
            [claimed] = RetryQueue().acquire(session, "ghost", batch_size=1, lock_timeout=2)
        assert claimed.id == abandoned

        slow = skewed(fleet, "slow", "-1h", -HOUR, lock_timeout=2, poll=0.2)
        due = [enqueue(db, WORK, 10 + k) for k in range(3)]
        for item_id in due:
            wait_until(
                completed_by(db, item_id, "slow"), timeout=30, what="the -1h worker, a due item"
            )
        wait_until(
            completed_by(db, abandoned, "slow"),
            timeout=30,
            what="the -1h worker reclaiming an expired lock",
        )
        slow.terminate()

        history = history_by_item(db.engine)
        assert history[abandoned] == [(1, "lock_expired", "ghost"), (2, "completed", "slow")]
        assert row(db, future).status is RetryStatus.PENDING and future not in history
        assert future not in {r.item_id for r in slow.executions()}
        print("\n[reliability] clock skew -1h: due_taken=3 expired_lock_reclaimed=1 taken_early=0")
