"""The asyncio worker's historical import path: ``from retryqueue.async_worker import AsyncWorker``.

The worker lives in :mod:`retryqueue.worker.async_worker`; this module only keeps the path
that the README and existing applications use.
"""

from __future__ import annotations

from retryqueue.worker.async_worker import AsyncWorker

__all__ = ["AsyncWorker"]
