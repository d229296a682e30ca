"""Many processes call gate() at once after the cool-down: exactly one wins the probe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import sessionmaker

from retryqueue import CircuitBreaker, CircuitStatus, RetryQueue, create_engine, migrations
from tests.support.servers import PostgresServer
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("probe_script.py")
PROCESSES = 8
BARRIER = 710_004


@pytest.fixture
def database(pg_server: PostgresServer) -> Iterator[tuple[URL, Engine]]:
    """A database of its own, migrated to head."""
    url = pg_server.create_database("rq_circuits")
    engine = create_engine(url)
    try:
        migrations.upgrade(engine)
        yield url, engine
    finally:
        engine.dispose()
        pg_server.drop_database(url)


def waiting_at_barrier(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.scalar(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND objid = :key AND NOT granted"
                ),
                {"key": BARRIER},
            )
            or 0
        )


def test_exactly_one_process_wins_the_probe(database: tuple[URL, Engine]) -> None:
    url, engine = database
    sessions = sessionmaker(engine)
    with sessions.begin() as session:  # open, with a cool-down already over on the server
        CircuitBreaker().open(session, "payments", cooldown=0.001)
        RetryQueue().enqueue(session, "charge", {}, plugin_name="payments")  # work to probe
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    with engine.connect() as barrier:
        barrier.execute(select(func.pg_advisory_lock(BARRIER)))
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(SCRIPT),
                    url.render_as_string(hide_password=False),
                    f"host{n}",
                    str(BARRIER),
                ],
                stdout=subprocess.PIPE,
                env=environment,
                cwd=REPO,
            )
            for n in range(PROCESSES)
        ]
        try:
            wait_until(
                lambda: waiting_at_barrier(engine) == PROCESSES,
                timeout=120,
                what=f"{PROCESSES} processes at the barrier",
            )
            barrier.execute(select(func.pg_advisory_unlock(BARRIER)))
            outputs = [process.communicate(timeout=120)[0] for process in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    assert all(process.returncode == 0 for process in processes)
    gates = [json.loads(output.decode().splitlines()[-1]) for output in outputs]
    winners = [gate["owner"] for gate in gates if gate["probes"] == ["payments"]]
    assert len(winners) == 1, gates
    with sessions() as session:
        (circuit,) = CircuitBreaker().states(session)
    assert circuit.status is CircuitStatus.HALF_OPEN and circuit.probe_owner == winners[0]
