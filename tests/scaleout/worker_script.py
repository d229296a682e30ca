"""A worker process that reaches PostgreSQL through PgBouncer in transaction-pooling mode.

Started by :class:`tests.reliability.fleet.Fleet` (the scale-out tests point the fleet at
this script): the same command line and files as ``tests/reliability/worker_script.py``,
and the same ``rel.work`` handler (it records each execution, sleeps ``work_ms``, fails as
:func:`~tests.reliability.worker_script.attempt_fails` plans). The difference is the
engine: ``create_engine(url, pgbouncer=True)`` on the PgBouncer URL in
``$RELIABILITY_DATABASE_URL``. The worker keeps its default ``listen=True``: on such an
engine it must fall back to polling by itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tests.reliability.worker_script import URL_VARIABLE, WORK, PlannedFailure, attempt_fails


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True, help="worker id and file name stem")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--lock-timeout", type=float, default=60.0)
    parser.add_argument("--heartbeat", type=float, default=None)
    parser.add_argument("--poll", type=float, default=0.2)
    return parser.parse_args(argv)


def _write_json(path: Path, document: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(document))
    partial.rename(path)


def _stop_when_orphaned(worker: Any) -> None:
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(0.5)
    worker.stop()


def main(argv: list[str]) -> int:
    """Run one worker through PgBouncer until SIGTERM, then write its report."""
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from sqlalchemy.orm import sessionmaker

    from retryqueue import RetryQueue, create_engine
    from retryqueue.worker import Job, Worker

    # Two connections at most: the round's transaction and the heartbeat.
    engine = create_engine(os.environ[URL_VARIABLE], pgbouncer=True, pool_size=2)
    executions = os.open(
        args.dir / f"{args.name}.executions", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
    )

    def work(job: Job) -> None:
        os.write(executions, f"{job.id} {job.attempt} {args.name}\n".encode())
        data = job.event_data
        if data.get("work_ms"):
            time.sleep(data["work_ms"] / 1000)
        if attempt_fails(
            data["n"],
            job.attempt,
            fail_percent=data.get("fail_percent", 0),
            always_fail=data.get("always_fail", False),
        ):
            raise PlannedFailure(f"planned failure of item {data['n']} attempt {job.attempt}")

    worker = Worker(
        RetryQueue(),
        sessionmaker(engine),
        {WORK: work},
        worker_id=args.name,
        batch_size=args.batch_size,
        lock_timeout=args.lock_timeout,
        heartbeat_interval=args.heartbeat,
        poll_interval=args.poll,
    )
    worker.install_signal_handlers()
    threading.Thread(target=_stop_when_orphaned, args=(worker,), daemon=True).start()
    _write_json(args.dir / f"{args.name}.ready.json", {"pid": os.getpid()})
    try:
        report = worker.run()
    finally:
        worker.restore_signal_handlers()
        os.close(executions)
        engine.dispose()
    _write_json(args.dir / f"{args.name}.report.json", asdict(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
