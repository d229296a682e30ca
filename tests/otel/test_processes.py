"""Across processes: the context survives a worker elsewhere; nothing is imported unasked."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from opentelemetry.trace import SpanKind
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from retryqueue import RetryQueue
from retryqueue.otel import RetryQueueInstrumentor
from tests.otel.conftest import Telemetry

ROOT = Path(__file__).resolve().parents[2]


def run_python(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the project's Python in a subprocess from the repository root."""
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_context_survives_a_worker_in_another_process(
    telemetry: Telemetry,
    engine: Engine,
    sessions: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    tracer = telemetry.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("POST /orders"), sessions.begin() as session:
        RetryQueue().enqueue(session, "orders.sync", {"order": 1}, retry_delay_seconds=0)
    (producer,) = telemetry.finished(SpanKind.PRODUCER)
    spans_file = tmp_path / "spans.jsonl"
    url = engine.url.render_as_string(hide_password=False)
    done = run_python("-m", "tests.otel.worker_process", url, str(spans_file))
    assert done.returncode == 0, done.stderr
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    first, second = sorted(spans, key=lambda s: s["attributes"]["retryqueue.attempt"])
    producer_trace = f"0x{producer.context.trace_id:032x}"
    producer_span = f"0x{producer.context.span_id:016x}"
    assert first["kind"] == second["kind"] == "SpanKind.CONSUMER"
    assert first["context"]["trace_id"] == producer_trace
    assert first["parent_id"] == producer_span
    assert first["attributes"]["retryqueue.outcome"] == "retry_scheduled"
    assert second["parent_id"] is None
    assert second["context"]["trace_id"] != producer_trace
    assert {link["context"]["span_id"] for link in second["links"]} == {
        producer_span,
        first["context"]["span_id"],
    }
    assert second["attributes"]["retryqueue.outcome"] == "completed"


NO_OTEL = textwrap.dedent(
    """
    import sys

    class NoOtel:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "opentelemetry" and BLOCK:
                raise ImportError("the otel extra is not installed")
            return None

    BLOCK = sys.argv[1] == "absent"
    sys.meta_path.insert(0, NoOtel())
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker
    import retryqueue, retryqueue.cli, retryqueue.metrics, retryqueue.testing
    from retryqueue.models import metadata
    from retryqueue.worker import Worker
    from retryqueue.testing import drain

    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    sessions = sessionmaker(engine)
    queue = retryqueue.RetryQueue()
    with sessions.begin() as session:
        queue.enqueue(session, "a", {})
        queue.enqueue(session, "b", {})
    assert Worker(queue, sessions, {"a": lambda job: None}, listen=False).run_once().completed
    with sessions.begin() as session:
        drain(queue, session, {"b": lambda job: None})
    loaded = sorted(name for name in sys.modules if name.startswith("opentelemetry"))
    assert not loaded, loaded
    print("ok")
    """
)


@pytest.mark.parametrize("extra", ["absent", "installed"])
def test_nothing_is_imported_unless_instrumented(extra: str) -> None:
    done = run_python("-c", NO_OTEL, extra)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_registered_for_opentelemetry_instrument() -> None:
    (entry,) = entry_points(group="opentelemetry_instrumentor", name="retryqueue")
    assert entry.load() is RetryQueueInstrumentor
