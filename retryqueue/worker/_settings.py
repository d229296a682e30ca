"""The settings both workers take: :class:`WorkerOptions` (their meaning and defaults) and
:class:`WorkerSettings`, which checks them once, when a worker is made, and keeps them on
it. The first base of :class:`~retryqueue.worker._base.WorkerBase`; private, the public
names are re-exported by :mod:`retryqueue.worker`.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Mapping
from typing import TypedDict

from retryqueue import validation as check
from retryqueue.circuits import CircuitBreaker
from retryqueue.errors import InvalidArgument
from retryqueue.queue import RetryQueue
from retryqueue.worker._attempts import Observer
from retryqueue.worker.routing import Handler, Router, as_router

__all__ = ["WorkerOptions", "WorkerSettings", "default_worker_id"]


def default_worker_id() -> str:
    """Host name, process id and a random suffix (a restarted process is a new worker)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"[-255:]


class WorkerOptions(TypedDict, total=False):
    """The settings both workers take, as keyword arguments (defaults in brackets).

    ``worker_id`` [host-pid-random]; ``batch_size`` items per acquisition [10];
    ``lock_timeout`` seconds before an unrenewed lock may be reclaimed [300];
    ``poll_interval`` longest idle wait in seconds [1.0]; ``concurrency`` handlers
    running at once [1] (the thread worker with 1 and ``in_flight`` 2 or more runs them on
    its driver threads, taking turns, not on a handler thread of their own);
    ``heartbeat_interval`` seconds between lock renewals [lock_timeout / 3];
    ``shutdown_grace`` seconds running handlers get at shutdown [30];
    ``listen`` wake on PostgreSQL NOTIFY [True]; ``observers`` callables receiving an
    :class:`AttemptResult` after each attempt; ``breaker`` a
    :class:`~retryqueue.circuits.CircuitBreaker` whose open circuits' items are skipped
    [None]; ``prefetch`` claimed items kept ready beyond a batch, so that handlers never
    wait for a claim [batch_size]; ``flush_age`` seconds a finished outcome may wait for
    batch-mates before it is recorded [0.005]; ``ready_timeout`` seconds a claimed item may
    wait for a free handler before it is given back to the queue for other workers
    [min(lock_timeout / 2, 30)]; ``in_flight`` pipeline transactions (record outcomes,
    claim more) that may run at once, each on its own connection [up to 2 on PostgreSQL,
    the second only while it pays; else 1].
    """

    worker_id: str | None
    batch_size: int
    lock_timeout: float
    poll_interval: float
    concurrency: int
    heartbeat_interval: float | None
    shutdown_grace: float
    listen: bool
    observers: Iterable[Observer]
    breaker: CircuitBreaker | None
    prefetch: int | None
    flush_age: float
    ready_timeout: float | None
    in_flight: int | None


class WorkerSettings:
    """A worker's checked settings (see :class:`WorkerOptions`), and the bookkeeping of its
    rounds that starts with them (the next stale-lock sweep, the registry's state)."""

    def __init__(
        self,
        queue: RetryQueue,
        handlers: Router | Mapping[str, Handler],
        *,
        worker_id: str | None = None,
        batch_size: int = 10,
        lock_timeout: float = 300,
        poll_interval: float = 1.0,
        concurrency: int = 1,
        heartbeat_interval: float | None = None,
        shutdown_grace: float = 30.0,
        listen: bool = True,
        observers: Iterable[Observer] = (),
        breaker: CircuitBreaker | None = None,
        prefetch: int | None = None,
        flush_age: float = 0.005,
        ready_timeout: float | None = None,
        in_flight: int | None = None,
    ) -> None:
        self.queue = queue
        self.router = as_router(handlers)
        self.worker_id = check.text("worker_id", worker_id or default_worker_id())
        self.batch_size = check.bounded_int("batch_size", batch_size, low=1, high=10_000)
        self.lock_timeout = check.seconds("lock_timeout", lock_timeout, allow_zero=False)
        self.poll_interval = check.seconds("poll_interval", poll_interval, allow_zero=False)
        self.concurrency = check.bounded_int("concurrency", concurrency, low=1, high=1024)
        beat = self.lock_timeout / 3 if heartbeat_interval is None else heartbeat_interval
        self.heartbeat_interval = check.seconds("heartbeat_interval", beat, allow_zero=False)
        if self.heartbeat_interval >= self.lock_timeout:
            raise InvalidArgument("heartbeat_interval", "must be shorter than lock_timeout")
        self.shutdown_grace = check.seconds("shutdown_grace", shutdown_grace)
        self.listen = listen
        self.observers = tuple(observers)
        self.breaker = breaker
        ahead = self.batch_size if prefetch is None else prefetch
        self.prefetch = check.bounded_int("prefetch", ahead, low=0, high=10_000)
        self.flush_age = check.seconds("flush_age", flush_age)
        if self.flush_age >= self.lock_timeout:  # buffered outcomes are heartbeated too
            raise InvalidArgument("flush_age", "must be shorter than lock_timeout")
        waits = min(self.lock_timeout / 2, 30.0) if ready_timeout is None else ready_timeout
        self.ready_timeout = check.seconds("ready_timeout", waits, allow_zero=False)
        self.in_flight = (
            None if in_flight is None else check.bounded_int("in_flight", in_flight, low=1, high=8)
        )
        self._next_reclaim = 0.0
        self._registry_on = True
        self._registered = False
        self._next_registry = 0.0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(worker_id={self.worker_id!r}, router={self.router!r})"
