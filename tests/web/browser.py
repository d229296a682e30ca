"""Helpers of the browser tests and the docs' screenshot script: a dashboard served by the
real ``retryqueue dashboard`` command on a free port, and Debian's Chromium."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def serve_dashboard(database_url: str, *, extra: tuple[str, ...] = ()) -> Iterator[str]:
    """Run ``retryqueue dashboard`` on a free loopback port; yields its base URL."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from retryqueue.cli import main; main()",
            "--database-url",
            database_url,
            "dashboard",
            "--port",
            str(port),
            *extra,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not _accepts(port):
            if process.poll() is not None:
                message = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"the dashboard exited: {message}")
            if time.monotonic() > deadline:
                raise RuntimeError("the dashboard did not start listening within 30 s")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()
