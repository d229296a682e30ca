"""pgqueuer and procrastinate doing the same no-op drain, each in a database of its own.

Only their public APIs are used. Each is counted in its own tables: pgqueuer's log of
successful jobs, procrastinate's succeeded jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from multiprocessing.synchronize import Event
from typing import Any

from benchmarks.harness import Signals

PGQUEUER_COUNT = "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
PROCRASTINATE_COUNT = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
ENTRYPOINT = "noop"


async def _wait(event: Event) -> None:
    # Polled rather than awaited in a thread: a thread blocked on an event that is never
    # set would keep asyncio.run() from returning if the consumer fails.
    while not event.is_set():
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------------------
# pgqueuer


async def _pgqueuer_driver(dsn: str, driver: str) -> Any:
    if driver == "asyncpg":
        import asyncpg  # type: ignore[import-untyped]
        from pgqueuer import AsyncpgDriver

        return AsyncpgDriver(await asyncpg.connect(dsn))
    import psycopg
    from pgqueuer import PsycopgDriver

    return PsycopgDriver(await psycopg.AsyncConnection.connect(dsn, autocommit=True))


async def _pgqueuer_seed(dsn: str, count: int) -> None:
    from pgqueuer import Queries

    queries = Queries(await _pgqueuer_driver(dsn, "asyncpg"))
    await queries.install()
    for first in range(0, count, 10_000):
        size = min(10_000, count - first)
        await queries.enqueue([ENTRYPOINT] * size, [None] * size, [0] * size)


def pgqueuer_seed(dsn: str, count: int) -> None:
    """Install pgqueuer's schema and enqueue ``count`` no-op jobs."""
    asyncio.run(_pgqueuer_seed(dsn, count))


# pgqueuer's own benchmark (tools/benchmark.py) runs 5 dequeue tasks, each with its own
# connection, in one process, batch 10, on uvloop (a dependency of pgqueuer; its CLI runs
# workers on it too). Until 2026-11-30 this ran 4 on asyncio's default loop.
DEQUEUERS = 5


async def _pgqueuer_consume(signals: Signals, dsn: str, driver: str, batch_size: int) -> None:
    from pgqueuer import Queries, QueueManager

    managers = [
        QueueManager(Queries(await _pgqueuer_driver(dsn, driver))) for _ in range(DEQUEUERS)
    ]
    for manager in managers:

        @manager.entrypoint(ENTRYPOINT)
        async def noop(job: Any) -> None:
            """The no-op handler."""

    signals.ready.set()
    await _wait(signals.start)

    async def stop_later() -> None:
        await _wait(signals.stop)
        for manager in managers:
            manager.shutdown.set()

    stopper = asyncio.create_task(stop_later())
    await asyncio.gather(
        *(
            manager.run(batch_size=batch_size, dequeue_timeout=timedelta(seconds=1))
            for manager in managers
        )
    )
    await stopper


def pgqueuer_consume(signals: Signals, dsn: str, driver: str, batch_size: int) -> None:
    """A pgqueuer consumer process as pgqueuer's own benchmark runs it: DEQUEUERS
    QueueManagers (each with its connection) in one uvloop event loop, asyncpg or psycopg
    driver."""
    import uvloop  # installed with pgqueuer

    uvloop.run(_pgqueuer_consume(signals, dsn, driver, batch_size))


# ---------------------------------------------------------------------------------------
# procrastinate


def _procrastinate_app(dsn: str) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name=ENTRYPOINT)
    def noop() -> None:
        """The no-op task."""

    return app


async def _procrastinate_seed(dsn: str, count: int) -> None:
    app = _procrastinate_app(dsn)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        task = app.tasks[ENTRYPOINT]
        for first in range(0, count, 1000):
            await task.batch_defer_async(*({} for _ in range(min(1000, count - first))))


def procrastinate_seed(dsn: str, count: int) -> None:
    """Apply procrastinate's schema and defer ``count`` no-op jobs."""
    asyncio.run(_procrastinate_seed(dsn, count))


async def _procrastinate_consume(signals: Signals, dsn: str, concurrency: int) -> None:
    app = _procrastinate_app(dsn)
    async with app.open_async():
        signals.ready.set()
        await _wait(signals.start)
        worker = asyncio.create_task(
            app.run_worker_async(
                concurrency=concurrency,
                wait=True,
                install_signal_handlers=False,
                listen_notify=True,
                fetch_job_polling_interval=1.0,
            )
        )
        await _wait(signals.stop)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


def procrastinate_consume(signals: Signals, dsn: str, concurrency: int) -> None:
    """A procrastinate worker process."""
    asyncio.run(_procrastinate_consume(signals, dsn, concurrency))
