"""The runtime: workers that take due items, run their handlers and record the outcomes.

One room, several modules:

- :mod:`~retryqueue.worker.threaded` — :class:`Worker`, handlers in threads
  (:mod:`~retryqueue.worker._threaded_calls`: how it runs them, inline turns included;
  :mod:`~retryqueue.worker._threaded_io`: its database side outside the flushes);
- :mod:`~retryqueue.worker.async_worker` — :class:`AsyncWorker`, handlers as asyncio tasks
  (imported lazily: it needs SQLAlchemy's asyncio extra);
- :mod:`~retryqueue.worker._base` — the transaction bodies both share
  (:mod:`~retryqueue.worker._settings`: their settings, checked);
  :mod:`~retryqueue.worker._attempts` — what a handler receives, the outcome guards;
  :mod:`~retryqueue.worker._reporting` — the tally, outcome logs and observers;
- :mod:`~retryqueue.worker._pipeline` — the pipeline both workers drive: the prefetch
  buffer, the outcome buffer and its flush rules (:mod:`~retryqueue.worker._batch`: a
  finished run, leases by token);
- :mod:`~retryqueue.worker.listener` / :mod:`~retryqueue.worker.async_listener` — LISTEN
  wake-ups on PostgreSQL;
- :mod:`~retryqueue.worker.routing` — :class:`Router` and the handler errors.
- :mod:`~retryqueue.worker.failures` — what a failed attempt records (failure plans).

The public names stay importable from here, as before the package existed::

    from retryqueue.worker import Worker, PermanentError, RetryLater, Router
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retryqueue.worker.threaded import (
    AttemptResult,
    Job,
    PermanentError,
    RetryLater,
    Router,
    RunReport,
    Worker,
    WorkerOptions,
    job_for,
    load_router,
)

if TYPE_CHECKING:
    from retryqueue.worker.async_worker import AsyncWorker

__all__ = [
    "AsyncWorker",
    "AttemptResult",
    "Job",
    "PermanentError",
    "RetryLater",
    "Router",
    "RunReport",
    "Worker",
    "WorkerOptions",
    "job_for",
    "load_router",
]


def __getattr__(name: str) -> Any:
    """Import :class:`AsyncWorker` on first use, so the sync worker never needs greenlet."""
    if name == "AsyncWorker":
        from retryqueue.worker.async_worker import AsyncWorker

        return AsyncWorker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
