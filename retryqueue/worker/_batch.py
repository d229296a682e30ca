"""What the workers pass around about one item: a finished handler run, and leases grouped
by token. The pipeline's bookkeeping lives in :mod:`retryqueue.worker._pipeline`.

Private to the workers (:mod:`retryqueue.worker`, :mod:`retryqueue.worker.async_worker`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from retryqueue.results import ClaimedItem
from retryqueue.worker.routing import Route

__all__ = ["Finished", "Lane", "by_token"]


@dataclass(slots=True)
class Finished:
    """A handler run that ended (``error`` None: success; ``route`` None: no handler)."""

    item: ClaimedItem
    route: Route | None
    error: BaseException | None
    duration_seconds: float
    finished_at: float = field(default_factory=time.monotonic)

    @property
    def duration_ms(self) -> int:
        """The run's duration in whole milliseconds."""
        return round(self.duration_seconds * 1000)


def by_token(items: Iterable[ClaimedItem]) -> dict[Any, list[int]]:
    """Item ids grouped by lease token (one heartbeat/release statement per token)."""
    groups: dict[Any, list[int]] = {}
    for item in items:
        groups.setdefault(item.lease_token, []).append(item.id)
    return groups


C = TypeVar("C")
S = TypeVar("S")


@dataclass(slots=True)
class Lane(Generic[C, S]):
    """What one driver keeps between its transactions: its autocommitted connection and a
    session on it (None until its first single-statement flush)."""

    solo: C | None = None
    session: S | None = None  # bound to solo
