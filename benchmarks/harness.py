"""Running consumers in worker processes and timing them against a count in the database.

Every drain follows the same protocol, whoever the consumer is: the parent seeds the items,
starts W processes and waits until each says it is ready (imports done, connected); then it
sets ``start``, and polls a COUNT in the database until every item is in a terminal state.
The elapsed time between ``start`` and that count is the figure. Processes are always
stopped and joined (terminated as a last resort) before the function returns.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

import psycopg

CONTEXT = multiprocessing.get_context("spawn")
READY_TIMEOUT = 60.0
POLL_SECONDS = 0.02


@dataclass
class Figure:
    """One measured figure of a run (what, who, and the numbers)."""

    scenario: str
    system: str
    params: dict[str, Any]
    value: float | None
    unit: str
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Signals:
    """The events a consumer process watches."""

    ready: Event
    start: Event
    stop: Event


def count_rows(dsn: str, query: str) -> int:
    """Run a COUNT query on its own short connection."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query).fetchone()
        return int(row[0]) if row else 0


def run_consumers(
    target: Callable[..., None],
    args: Sequence[Any],
    *,
    processes: int,
    dsn: str,
    count_query: str,
    expected: int,
    timeout: float,
    results: Queue[Any] | None = None,
    count: Callable[[], int] | None = None,
) -> tuple[float, int, list[Any]]:
    """Start ``processes`` consumers, time until ``count_query`` reaches ``expected``.

    ``target(signals, *args)`` runs in each child: it sets ``signals.ready`` when
    connected, waits for ``signals.start``, consumes until ``signals.stop``.
    Returns (seconds, items counted, what the children put on ``results`` after stopping).
    ``count`` replaces ``dsn``/``count_query`` for databases other than PostgreSQL.
    Raises TimeoutError if ``expected`` is not reached.
    """
    messages: list[Any] = []
    children = []
    ready_events = []
    start, stop = CONTEXT.Event(), CONTEXT.Event()
    try:
        for _ in range(processes):
            ready = CONTEXT.Event()
            child = CONTEXT.Process(target=target, args=(Signals(ready, start, stop), *args))
            child.start()
            children.append(child)
            ready_events.append(ready)
        deadline = time.monotonic() + READY_TIMEOUT
        for ready, child in zip(ready_events, children, strict=True):
            while not ready.wait(0.2):
                if not child.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"consumer process failed to start (exit {child.exitcode})")
        conn = psycopg.connect(dsn, autocommit=True) if count is None else None

        def counted() -> int:
            if count is not None:
                return count()
            assert conn is not None
            row = conn.execute(count_query).fetchone()
            return int(row[0]) if row else 0

        with contextlib.closing(conn) if conn is not None else contextlib.nullcontext():
            began = time.perf_counter()
            start.set()
            done = 0
            while True:
                done = counted()
                elapsed = time.perf_counter() - began
                if done >= expected:
                    break
                if elapsed > timeout:
                    raise TimeoutError(f"{done}/{expected} items after {elapsed:.0f}s")
                if not any(child.is_alive() for child in children):
                    raise RuntimeError(f"consumers died: {done}/{expected} items")
                time.sleep(POLL_SECONDS)
        stop.set()
        if results is not None:
            for _ in children:
                with contextlib.suppress(queue.Empty):
                    messages.append(results.get(timeout=30))
        return elapsed, done, messages
    finally:
        stop.set()
        stop_processes(children)


def stop_processes(children: Sequence[multiprocessing.process.BaseProcess]) -> None:
    """Join the children; terminate, then kill, any that do not exit in time."""
    for child in children:
        child.join(15)
    for child in children:
        if child.is_alive():
            child.terminate()
            child.join(5)
        if child.is_alive():
            child.kill()
            child.join()


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank) of a non-empty sequence."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]
