"""Run the real ``python -m retryqueue`` in a subprocess: piped, or on a pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


@dataclass(frozen=True)
class Ran:
    """A finished command: its exit code and output."""

    returncode: int
    stdout: str
    stderr: str


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "RETRYQUEUE_DATABASE_URL")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, input: str = ""
) -> Ran:
    """``python -m retryqueue ARGS`` with stdout and stderr piped (not a terminal)."""
    done = subprocess.run(
        [sys.executable, "-m", "retryqueue", *args],
        capture_output=True,
        text=True,
        env=_env(env),
        cwd=cwd or ROOT,
        input=input,
        timeout=120,
        check=False,
    )
    return Ran(done.returncode, done.stdout, done.stderr)


def run_in_terminal(*args: str, columns: int = 80, env: dict[str, str] | None = None) -> Ran:
    """``python -m retryqueue ARGS`` on a pseudo-terminal ``columns`` wide (stdout and stderr
    both on it, returned as ``stdout`` without escape sequences)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    extra = {"TERM": "xterm-256color", **(env or {})}
    process = subprocess.Popen(
        [sys.executable, "-m", "retryqueue", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=_env(extra),
        cwd=ROOT,
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other side closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    returncode = process.wait(timeout=120)
    return Ran(returncode, _ANSI.sub("", b"".join(chunks).decode(errors="replace")), "")
