"""The sync front works without greenlet (which only the asyncio extras install)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["greenlet"] = None  # as if it were not installed
    from sqlalchemy.orm import sessionmaker
    import retryqueue.cli, retryqueue.worker, retryqueue.testing
    from retryqueue import RetryQueue, create_engine, metadata
    from retryqueue.worker import Worker

    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    sessions = sessionmaker(engine)
    with sessions.begin() as session:
        RetryQueue().enqueue(session, "job", {})
    report = Worker(RetryQueue(), sessions, {"job": lambda job: None}, listen=False).run_once()
    assert report.completed == 1, report
    try:
        import retryqueue.worker.async_worker
    except ImportError as exc:
        print("async:", exc)
    """
)


class TestWithoutGreenlet:
    """Importing retryqueue and running a sync worker never needs the asyncio extras."""

    def test_sync_front_and_worker_run_and_the_async_worker_says_what_is_missing(
        self, tmp_path: Path
    ) -> None:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT],
            cwd=tmp_path,
            env={"PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "greenlet" in done.stdout
