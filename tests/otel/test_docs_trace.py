"""The trace shown in docs/observability.md is real, and the scripts that make it still work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
SCRIPTS = DOCS / "observability"


def run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args],
        cwd=DOCS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_docs_show_the_shipped_trace_rendered() -> None:
    tree = run(str(SCRIPTS / "trace_tree.py"), str(SCRIPTS / "trace.jsonl"))
    assert tree in (DOCS / "observability.md").read_text()


def test_recording_a_trace_again_tells_the_same_story(tmp_path: Path) -> None:
    spans = tmp_path / "trace.jsonl"
    run(str(SCRIPTS / "record_trace.py"), str(spans))
    tree = run(str(SCRIPTS / "trace_tree.py"), str(spans))
    traces = tree.strip().split("\n\n")
    assert len(traces) == 3
    first, second, third = traces
    assert "└─ POST /orders [SERVER]" in first
    assert "retryqueue enqueue payment.capture [PRODUCER]" in first
    assert "retryqueue.attempt=1, retryqueue.outcome=retry_scheduled" in first
    for later, attempt in ((second, 2), (third, 3)):
        assert later.splitlines()[1].startswith("└─ retryqueue process payment.capture [CONSUMER]")
        assert f"retryqueue.attempt={attempt}" in later
        assert "~ linked (enqueue) to retryqueue enqueue payment.capture" in later
        assert "~ linked (previous_attempt) to retryqueue process payment.capture" in later
    assert "retryqueue.outcome=completed" in third
