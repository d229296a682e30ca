"""Fixtures of the circuit breaker tests (the shared ``engine`` starts with no circuits)."""

from __future__ import annotations

import pytest

from retryqueue import CircuitBreaker, ManualClock


@pytest.fixture
def breaker(clock: ManualClock) -> CircuitBreaker:
    """Opens after 3 consecutive failures for 30 s (60, 120, ... after failed probes)."""
    return CircuitBreaker(failure_threshold=3, cooldown=30, max_cooldown=100, clock=clock)
