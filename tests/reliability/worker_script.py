"""A worker process for the multi-process reliability tests, and the failure plan it follows.

Run as ``python tests/reliability/worker_script.py --name N --dir D [options]`` with the
database URL in ``$RELIABILITY_DATABASE_URL`` (kept off the command line, where ``ps``
would show it). It runs a real :class:`~retryqueue.worker.Worker` until SIGTERM, then writes
its :class:`~retryqueue.worker.RunReport` to ``D/N.report.json``.

Every handler execution is appended to ``D/N.executions`` as ``item_id attempt worker_id``
*before* the handler does anything else, with one unbuffered ``write`` on an ``O_APPEND``
descriptor: a line is in the file once the handler has started, even if the process is
SIGKILLed a moment later. The tests count executions from these files, independently of the
queue's own bookkeeping.

Items say what their handler does through their event_data: ``n`` (the item's number),
``fail_percent`` and ``always_fail`` (see :func:`attempt_fails`), ``work_ms`` (simulated
work) and, for the ``rel.hold`` event type, ``release`` (a path: the handler holds its
item until that file exists); for ``rel.saturated``, ``open`` (a path: until it exists the
handler answers like a saturated destination, ``RetryLater(after=retry_after,
pause_key=True)``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

URL_VARIABLE = "RELIABILITY_DATABASE_URL"
WORK = "rel.work"
HOLD = "rel.hold"
SATURATED = "rel.saturated"
HOLD_LIMIT_SECONDS = 300.0  # a held handler gives up at last, so no process outlives a test


class PlannedFailure(Exception):
    """The failure a handler raises when :func:`attempt_fails` says so."""


def attempt_fails(n: int, attempt: int, *, fail_percent: int, always_fail: bool) -> bool:
    """Whether attempt ``attempt`` of item number ``n`` fails: deterministic, ~fail_percent %.

    A hash of (n, attempt) decides, so the test predicts every item's fate in advance.
    """
    if always_fail:
        return True
    digest = hashlib.sha256(f"{n}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < fail_percent


def predicted_attempts(
    n: int, max_retries: int, *, fail_percent: int, always_fail: bool
) -> tuple[int, bool]:
    """(attempts, completed) that the retry policy predicts for item number ``n``.

    An item is tried until an attempt succeeds or max_retries + 1 attempts have failed
    (then it is dead-lettered).
    """
    for attempt in range(1, max_retries + 2):
        if not attempt_fails(n, attempt, fail_percent=fail_percent, always_fail=always_fail):
            return attempt, True
    return max_retries + 1, False


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True, help="worker id and file name stem")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--lock-timeout", type=float, default=60.0)
    parser.add_argument("--heartbeat", type=float, default=None)
    parser.add_argument("--poll", type=float, default=0.5)
    parser.add_argument("--no-listen", action="store_true")
    parser.add_argument(
        "--pgbouncer", action="store_true", help="the URL is PgBouncer (transaction pooling)"
    )
    parser.add_argument("--asyncio", action="store_true", help="run the AsyncWorker instead")
    parser.add_argument(
        "--expect-skew",
        type=float,
        default=None,
        help="seconds this host's clock must be ahead of the database's (exit 3 otherwise)",
    )
    return parser.parse_args(argv)


async def _run_async(
    args: argparse.Namespace, handlers: dict[str, Any], settings: dict[str, Any], ready: Any
) -> Any:
    """The AsyncWorker on the async driver; the (plain) handlers run in its thread pool."""
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from retryqueue import RetryQueue, create_async_engine
    from retryqueue.worker.async_worker import AsyncWorker

    engine = create_async_engine(os.environ[URL_VARIABLE], pgbouncer=args.pgbouncer)
    worker = AsyncWorker(RetryQueue(), async_sessionmaker(engine), handlers, **settings)
    threading.Thread(target=_stop_when_orphaned, args=(worker,), daemon=True).start()
    default = signal.getsignal(signal.SIGTERM)
    running = asyncio.create_task(worker.run(install_signals=True))
    while signal.getsignal(signal.SIGTERM) is default and not running.done():
        await asyncio.sleep(0.01)  # until run() has taken SIGTERM over
    _write_json(args.dir / f"{args.name}.ready.json", ready)
    try:
        return await running
    finally:
        await engine.dispose()


def _clock_skew(engine: Any) -> float:
    """This process's clock minus the database server's, in seconds."""
    with engine.connect() as connection:
        server_now = connection.exec_driver_sql("select now()").scalar_one()
    return (datetime.now(UTC) - server_now).total_seconds()


def _write_json(path: Path, document: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(document))
    partial.rename(path)  # readers never see half a document


def _stop_when_orphaned(worker: Any) -> None:
    """Stop the worker if the test process dies without stopping it: no orphans, ever."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.5)
    worker.stop()


def main(argv: list[str]) -> int:
    """Run one worker until SIGTERM; see the module docstring."""
    args = _parse(argv)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from sqlalchemy.orm import sessionmaker

    from retryqueue import RetryQueue, create_engine
    from retryqueue.worker import Job, RetryLater, Worker

    engine = create_engine(os.environ[URL_VARIABLE], pgbouncer=args.pgbouncer)
    skew = _clock_skew(engine)
    if args.expect_skew is not None and abs(skew - args.expect_skew) > 300:
        print(f"clock skew is {skew:.0f}s, expected {args.expect_skew:.0f}s", file=sys.stderr)
        return 3
    executions = os.open(
        args.dir / f"{args.name}.executions", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
    )

    def record(job: Job) -> None:
        os.write(executions, f"{job.id} {job.attempt} {args.name}\n".encode())

    def work(job: Job) -> None:
        record(job)
        data = job.event_data
        if data.get("work_ms"):
            time.sleep(data["work_ms"] / 1000)  # the handler's simulated work
        failing = attempt_fails(
            data["n"],
            job.attempt,
            fail_percent=data.get("fail_percent", 0),
            always_fail=data.get("always_fail", False),
        )
        if failing:
            raise PlannedFailure(f"planned failure of item {data['n']} attempt {job.attempt}")

    def hold(job: Job) -> None:
        record(job)
        release = Path(job.event_data["release"])
        deadline = time.monotonic() + HOLD_LIMIT_SECONDS
        while not release.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("never released")
            time.sleep(0.05)

    def saturated(job: Job) -> None:
        # A destination answering 429 with Retry-After until the test creates ``open``.
        record(job)
        if not Path(job.event_data["open"]).exists():
            raise RetryLater(after=job.event_data["retry_after"], pause_key=True, code="HTTP_429")

    settings: dict[str, Any] = {
        "worker_id": args.name,
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "lock_timeout": args.lock_timeout,
        "heartbeat_interval": args.heartbeat,
        "poll_interval": args.poll,
        "listen": not args.no_listen,
    }
    ready = {"pid": os.getpid(), "now": datetime.now(UTC).isoformat(), "skew": skew}
    handlers = {WORK: work, HOLD: hold, SATURATED: saturated}
    try:
        if args.asyncio:
            report = asyncio.run(_run_async(args, handlers, settings, ready))
        else:
            worker = Worker(RetryQueue(), sessionmaker(engine), handlers, **settings)
            worker.install_signal_handlers()  # before "ready": SIGTERM from then on stops
            threading.Thread(target=_stop_when_orphaned, args=(worker,), daemon=True).start()
            _write_json(args.dir / f"{args.name}.ready.json", ready)
            try:
                report = worker.run()
            finally:
                worker.restore_signal_handlers()
    finally:
        os.close(executions)
        engine.dispose()
    _write_json(args.dir / f"{args.name}.report.json", asdict(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
