"""Installing retryqueue is enough: a user's pytest run gets the fixtures, no conftest."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

USER_TEST = """
from retryqueue.testing import assert_enqueued, drain

def test_user_code(rq_session, rq_queue, rq_clock):
    rq_queue.enqueue(rq_session, "payment.capture", {"order": 7}, priority=8)
    assert_enqueued(rq_session, event_type="payment.capture", priority=8)
    report = drain(rq_queue, rq_session, {"payment.*": lambda job: None})
    assert [item.status.value for item in report.items.values()] == ["completed"]
"""


def test_fixtures_come_from_the_entry_point(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TEST))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert not list(tmp_path.glob("conftest.py"))
