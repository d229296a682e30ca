"""Waiting on conditions instead of sleeping: poll until true, fail at a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

DEADLINE = 15.0


def wait_until(
    condition: Callable[[], object],
    *,
    timeout: float = DEADLINE,
    what: str = "",
    interval: float = 0.02,
) -> None:
    """Poll ``condition`` until it is true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)
