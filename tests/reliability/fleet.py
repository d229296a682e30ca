"""Worker processes for the reliability tests, and what the database and their files say.

:class:`Fleet` starts ``worker_script.py`` subprocesses, kills or stops them, and always
reaps them. The readers below collect what happened: handler executions from the workers'
own files, history rows and final states from the database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import NewItem, RetryQueue, RetryStatus
from retryqueue.models import TERMINAL_STATUSES, RetryHistory, RetryItem
from tests.reliability.worker_script import URL_VARIABLE
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("worker_script.py")
STARTUP_TIMEOUT = 60.0  # a Python process importing SQLAlchemy on a loaded 2-core machine
STOP_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Execution:
    """One handler run, as the handler itself recorded it."""

    item_id: int
    attempt: int
    worker: str


@dataclass
class WorkerProcess:
    """One worker subprocess and its files."""

    name: str
    process: subprocess.Popen[bytes]
    directory: Path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.process.pid

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process.poll() is None

    def ready(self) -> dict[str, Any] | None:
        """What the worker wrote once it was about to run (pid, clock, skew), or None yet."""
        path = self.directory / f"{self.name}.ready.json"
        return json.loads(path.read_text()) if path.exists() else None

    def report(self) -> dict[str, int] | None:
        """Its RunReport as a dict, once it stopped cleanly."""
        path = self.directory / f"{self.name}.report.json"
        return json.loads(path.read_text()) if path.exists() else None

    def stderr(self) -> str:
        """What it logged so far (WARNING and above)."""
        path = self.directory / f"{self.name}.stderr"
        return path.read_text(errors="replace") if path.exists() else ""

    def executions(self) -> list[Execution]:
        """Handler runs this process recorded."""
        return read_executions(self.directory / f"{self.name}.executions")

    def kill(self) -> None:
        """SIGKILL it and reap it."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT)

    def terminate(self) -> dict[str, int]:
        """SIGTERM (graceful stop) and wait; its RunReport. Fails if it did not stop cleanly."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(STOP_TIMEOUT)
        report = self.report()
        assert code == 0 and report is not None, (
            f"{self.name} exited with {code} without a report:\n{self.stderr()[-3000:]}"
        )
        return report


@dataclass
class Fleet:
    """Starts worker processes on one database; :meth:`close` reaps every one of them."""

    directory: Path
    url: URL
    processes: list[WorkerProcess] = field(default_factory=list)

    def start(
        self,
        name: str,
        *,
        env: dict[str, str] | None = None,
        **options: Any,
    ) -> WorkerProcess:
        """Start ``worker_script.py --name name`` with ``--option value`` per keyword.

        ``True`` passes a bare flag (``no_listen=True`` gives ``--no-listen``).
        """
        argv = [sys.executable, str(SCRIPT), "--name", name, "--dir", str(self.directory)]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value is not None and value is not False:
                argv += [flag, str(value)]
        url = self.url
        if url.get_backend_name() == "postgresql":  # its sessions show up under its name
            url = url.update_query_dict({"application_name": name[:63]})
        environment = {
            **os.environ,
            **(env or {}),
            "PYTHONPATH": str(REPO),
            URL_VARIABLE: url.render_as_string(hide_password=False),
        }
        with open(self.directory / f"{name}.stderr", "ab") as stderr:
            process = subprocess.Popen(
                argv, cwd=REPO, env=environment, stdout=subprocess.DEVNULL, stderr=stderr
            )
        handle = WorkerProcess(name, process, self.directory)
        self.processes.append(handle)
        return handle

    def start_ready(self, prefix: str, count: int, **options: Any) -> list[WorkerProcess]:
        """Start ``count`` workers named ``prefix-0``, ``prefix-1``, … and wait until all
        are ready (their signal handlers installed)."""
        workers = [self.start(f"{prefix}-{n}", **options) for n in range(count)]
        self.wait_ready(workers)
        return workers

    def wait_ready(self, workers: Iterable[WorkerProcess]) -> None:
        """Wait until each worker is about to run (its signal handlers are installed)."""
        for worker in workers:

            def ready(worker: WorkerProcess = worker) -> bool:
                if not worker.alive():
                    raise AssertionError(
                        f"{worker.name} exited with {worker.process.returncode}:\n"
                        f"{worker.stderr()[-3000:]}"
                    )
                return worker.ready() is not None

            wait_until(ready, timeout=STARTUP_TIMEOUT, what=f"{worker.name} to start")

    def executions(self) -> list[Execution]:
        """Every handler run any process of this fleet recorded."""
        runs: list[Execution] = []
        for path in sorted(self.directory.glob("*.executions")):
            runs += read_executions(path)
        return runs

    def close(self) -> None:
        """Stop whatever still runs: SIGTERM, then SIGKILL after a grace period."""
        for worker in self.processes:
            if worker.alive():
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for worker in self.processes:
            try:
                worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait(STOP_TIMEOUT)


def read_executions(path: Path) -> list[Execution]:
    """The handler runs recorded in one executions file."""
    if not path.exists():
        return []
    runs = []
    for line in path.read_text().splitlines():
        item_id, attempt, worker = line.split(" ")
        runs.append(Execution(int(item_id), int(attempt), worker))
    return runs


# -- the database's side ----------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    """A migrated database, its engine and a sessionmaker on it."""

    url: URL
    engine: Engine
    sessions: sessionmaker[Session]


def enqueue_work(
    sessions: sessionmaker[Session],
    numbers: Iterable[int],
    *,
    chunk: int = 1000,
    max_retries: Any = 3,
    **data: Any,
) -> None:
    """Enqueue one ``rel.work`` item per number (event_data ``{"n": n, **data}``), due now.

    ``max_retries`` is a number or a function of n. Retries are due at once
    (retry_delay_seconds=0).
    """
    queue = RetryQueue()
    numbers = list(numbers)
    for start in range(0, len(numbers), chunk):
        items = [
            NewItem(
                "rel.work",
                {"n": n, **data},
                max_retries=max_retries(n) if callable(max_retries) else max_retries,
                retry_delay_seconds=0,
            )
            for n in numbers[start : start + chunk]
        ]
        with sessions.begin() as session:
            queue.enqueue_many(session, items)


def count_items(engine: Engine, *statuses: RetryStatus) -> int:
    """How many items have one of these statuses (all items if none given)."""
    stmt = select(func.count()).select_from(RetryItem)
    if statuses:
        stmt = stmt.where(RetryItem.status.in_(statuses))
    with engine.connect() as connection:
        return int(connection.scalar(stmt) or 0)


def wait_all_terminal(engine: Engine, total: int, *, timeout: float, what: str) -> None:
    """Wait until ``total`` items are in a terminal state."""
    wait_until(
        lambda: count_items(engine, *TERMINAL_STATUSES) >= total,
        timeout=timeout,
        interval=0.25,
        what=what,
    )


@dataclass(frozen=True, slots=True)
class FinalState:
    """An item's row at the end of a run."""

    n: int
    status: RetryStatus
    retry_count: int
    max_retries: int
    locked_by: str | None


def final_states(engine: Engine) -> dict[int, FinalState]:
    """Every item's final state, by id."""
    stmt = select(
        RetryItem.id,
        RetryItem.event_data,
        RetryItem.status,
        RetryItem.retry_count,
        RetryItem.max_retries,
        RetryItem.locked_by,
    )
    with engine.connect() as connection:
        return {
            row.id: FinalState(
                row.event_data["n"], row.status, row.retry_count, row.max_retries, row.locked_by
            )
            for row in connection.execute(stmt)
        }


def history_by_item(engine: Engine) -> dict[int, list[tuple[int, str, str | None]]]:
    """Each item's history rows as (attempt_number, status, worker_id), oldest first."""
    stmt = select(
        RetryHistory.retry_queue_id,
        RetryHistory.attempt_number,
        RetryHistory.status,
        RetryHistory.worker_id,
    ).order_by(RetryHistory.id)
    rows: dict[int, list[tuple[int, str, str | None]]] = defaultdict(list)
    with engine.connect() as connection:
        for item_id, attempt, status, worker in connection.execute(stmt):
            rows[item_id].append((attempt, status, worker))
    return dict(rows)


def executions_by_item(runs: Iterable[Execution]) -> dict[int, list[Execution]]:
    """Handler runs grouped per item."""
    grouped: dict[int, list[Execution]] = defaultdict(list)
    for run in runs:
        grouped[run.item_id].append(run)
    return dict(grouped)


def completed_rows_per_item(history: dict[int, list[tuple[int, str, str | None]]]) -> Counter[int]:
    """How many ``completed`` history rows each item has."""
    return Counter(
        {
            item_id: sum(1 for _, status, _ in rows if status == "completed")
            for item_id, rows in history.items()
        }
    )
