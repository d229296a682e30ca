"""``retryqueue demo``: the whole retry story in about ten seconds, with no server.

A seeded mix of chat and media events is enqueued for a few plugins; two workers run a
deterministic flaky handler whose behaviour is written into each event's data:

* most items succeed at once;
* ``flaky: n`` items time out on their first n attempts, then succeed (backoff → retry);
* ``corrupt: true`` media items raise :class:`PermanentError` (failed at once);
* every item for the ``legacy-webhook`` plugin fails until it is dead-lettered.

Delays are scaled down (1 s first retry, multiplier 1.5) so the story plays out quickly.
Outcomes depend on the data only, never on thread timing, so every run ends the same.

Not for production databases: :func:`run_demo` refuses a queue that already has items,
since its workers would run the demo handlers on them.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import Engine, func, inspect, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import migrations
from retryqueue.errors import InvalidArgument, database_error
from retryqueue.models import TERMINAL_STATUSES, RetryItem, RetryStatus
from retryqueue.queue import NewItem, RetryQueue
from retryqueue.worker import AttemptResult, Job, PermanentError, Router, RunReport, Worker

__all__ = ["DemoResult", "build_items", "demo_router", "run_demo"]

CHANNELS = ("general", "random", "support")
CHAT_PLUGINS = ("slack", "teams", "discord")
FAILING_PLUGIN = "legacy-webhook"
RETRY_DELAY_SECONDS = 1
BACKOFF_MULTIPLIER = 1.5
MAX_RETRIES = 3
_REFRESH_SECONDS = 0.2


class DemoTimeout(TimeoutError):
    """The simulated transient failure."""

    code = "TIMEOUT"


class WebhookDown(ConnectionError):
    """The simulated outage of the legacy webhook."""

    code = "HTTP_503"


def build_items(count: int = 60, seed: int = 7) -> list[NewItem]:
    """A seeded, realistic mix of chat messages and media events."""
    rng = random.Random(seed)
    items = []
    for number in range(count):
        work_ms = rng.randint(20, 80)
        roll = rng.random()
        common: dict[str, Any] = {
            "max_retries": MAX_RETRIES,
            "retry_delay_seconds": RETRY_DELAY_SECONDS,
            "backoff_multiplier": BACKOFF_MULTIPLIER,
            "correlation_id": f"demo-{number:03d}",
            "tags": ["demo"],
        }
        if number % 12 == 5:
            data = {"text": f"alert #{number}", "work_ms": work_ms}
            items.append(
                NewItem(
                    "chat.message",
                    data,
                    channel_name="alerts",
                    plugin_name=FAILING_PLUGIN,
                    **common,
                )
            )
        elif roll < 0.65:
            data = {
                "text": f"message {number}",
                "user": f"user{rng.randint(1, 9)}",
                "work_ms": work_ms,
                "flaky": rng.choice((0, 0, 0, 1, 1, 2)),
            }
            items.append(
                NewItem(
                    "chat.message",
                    data,
                    channel_name=rng.choice(CHANNELS),
                    plugin_name=rng.choice(CHAT_PLUGINS),
                    **common,
                )
            )
        else:
            kind = rng.choice(("media.image.uploaded", "media.video.uploaded"))
            data = {
                "file": f"upload-{number}.{'png' if 'image' in kind else 'mp4'}",
                "work_ms": work_ms,
                "flaky": rng.choice((0, 0, 1)),
                "corrupt": rng.random() < 0.15,
            }
            items.append(
                NewItem(
                    kind,
                    data,
                    channel_name="media",
                    plugin_name=rng.choice(("s3", "thumbnailer")),
                    priority=rng.choice((5, 7)),
                    **common,
                )
            )
    return items


def _flaky_handler(job: Job) -> None:
    data = job.event_data
    time.sleep(int(data.get("work_ms", 0)) / 1000)
    if job.plugin_name == FAILING_PLUGIN:
        raise WebhookDown("legacy webhook answered 503 Service Unavailable")
    if data.get("corrupt"):
        raise PermanentError(f"cannot decode {data.get('file')}", code="CORRUPT_MEDIA")
    if job.attempt <= int(data.get("flaky", 0)):
        raise DemoTimeout(f"upstream timed out on attempt {job.attempt}")


def demo_router() -> Router:
    """Routes for the demo's event types, all served by the flaky handler."""
    return Router({"chat.message": _flaky_handler, "media.*": _flaky_handler})


@dataclass(frozen=True)
class DemoResult:
    """What a demo run did."""

    total: int
    elapsed_seconds: float
    finished: bool
    reports: tuple[RunReport, ...]
    statuses: dict[str, int]


class _Feed:
    """Attempts reported by the workers' observers, for the live display."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.recent: deque[AttemptResult] = deque(maxlen=8)
        self.outcomes: Counter[str] = Counter()

    def __call__(self, result: AttemptResult) -> None:
        with self.lock:
            self.recent.append(result)
            self.outcomes[result.outcome] += 1


def run_demo(
    engine: Engine,
    console: Console,
    *,
    items: int = 60,
    seed: int = 7,
    workers: int = 2,
    timeout: float = 60.0,
    observers: tuple[Callable[[AttemptResult], object], ...] = (),
) -> DemoResult:
    """Migrate, enqueue the mix, run the workers until every item is finished, report."""
    sessions = sessionmaker(engine, expire_on_commit=False)
    _prepare(engine, sessions)
    queue = RetryQueue()
    with sessions.begin() as session:
        queue.enqueue_many(session, build_items(items, seed))
    feed = _Feed()
    pool = [
        Worker(
            queue,
            sessions,
            demo_router(),
            worker_id=f"demo-worker-{n + 1}",
            batch_size=4,
            poll_interval=0.1,
            lock_timeout=30,
            observers=(feed, *observers),
        )
        for n in range(workers)
    ]
    reports: list[RunReport] = [RunReport()] * workers

    def work(index: int) -> None:
        reports[index] = pool[index].run()

    threads = [
        threading.Thread(target=work, args=(n,), name=f"demo-worker-{n + 1}")
        for n in range(workers)
    ]
    # The live display tells the story; the workers' own log lines would garble it.
    worker_log = logging.getLogger("retryqueue.worker")
    previous_level, worker_log.level = worker_log.level, logging.CRITICAL
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        statuses = _watch(sessions, console, feed, items, started, timeout)
    finally:
        for worker in pool:
            worker.stop()
        for thread in threads:
            thread.join()
        worker_log.setLevel(previous_level)
    finished = sum(statuses.get(s.value, 0) for s in TERMINAL_STATUSES) == items
    return DemoResult(
        items, time.monotonic() - started, finished, tuple(reports), _count_statuses(sessions)
    )


def _prepare(engine: Engine, sessions: sessionmaker[Session]) -> None:
    """Migrate a new database; refuse one whose queue has items."""
    try:
        exists = inspect(engine).has_table(RetryItem.__tablename__)
    except SQLAlchemyError as exc:
        raise database_error("demo", exc) from exc
    if exists:
        with sessions() as session:
            if session.scalar(select(func.count()).select_from(RetryItem)):
                raise InvalidArgument(
                    "database",
                    "the demo needs an empty queue (its workers would run the items there)",
                )
        if not migrations.current(engine):
            return  # tables made without alembic (metadata.create_all): use them as they are
    migrations.upgrade(engine)


def _count_statuses(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        rows = session.execute(
            select(RetryItem.status, func.count()).group_by(RetryItem.status)
        ).all()
    return {RetryStatus(status).value: int(count) for status, count in rows}


def _watch(
    sessions: sessionmaker[Session],
    console: Console,
    feed: _Feed,
    total: int,
    started: float,
    timeout: float,
) -> dict[str, int]:
    """Refresh the live display until every item is finished (or the timeout)."""
    progress = Progress(
        TextColumn("finished"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task("finished", total=total)
    statuses: dict[str, int] = {}
    with Live(console=console, refresh_per_second=8, transient=False) as live:
        while time.monotonic() - started < timeout:
            statuses = _count_statuses(sessions)
            done = sum(statuses.get(s.value, 0) for s in TERMINAL_STATUSES)
            progress.update(task, completed=done)
            live.update(Group(progress, _status_table(statuses), _recent_table(feed)))
            if done == total:
                break
            time.sleep(_REFRESH_SECONDS)
    return statuses


def _status_table(statuses: dict[str, int]) -> Table:
    table = Table(title="Queue by status", show_header=False, min_width=40)
    table.add_column("status")
    table.add_column("items", justify="right")
    for status in RetryStatus:
        table.add_row(status.value, str(statuses.get(status.value, 0)))
    return table


def _recent_table(feed: _Feed) -> Table:
    with feed.lock:
        recent = list(feed.recent)
        outcomes = dict(feed.outcomes)
    summary = ", ".join(f"{name} {count}" for name, count in sorted(outcomes.items()))
    table = Table(title=f"Latest attempts ({summary or 'none yet'})", min_width=40)
    for name in ("item", "event type", "plugin", "attempt", "outcome", "error"):
        table.add_column(name)
    for result in recent:
        table.add_row(
            str(result.item_id),
            result.event_type,
            result.plugin_name or "-",
            str(result.attempt),
            result.outcome,
            result.error_code or "",
        )
    return table
