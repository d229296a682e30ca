"""Long-running commands: the metrics exporter, the worker and the demo."""

from __future__ import annotations

import asyncio
import enum
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError

from retryqueue import metrics
from retryqueue.cli._context import (
    CliError,
    _first_line,
    console,
    import_from_cwd,
    print_json,
    print_table,
    state,
)
from retryqueue.cli.monitor import alerts_table, stats_table
from retryqueue.engine import create_async_engine, create_engine
from retryqueue.queue import RetryQueue
from retryqueue.worker import RunReport, WorkerOptions
from retryqueue.worker.routing import Router

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
E = TypeVar("E")


class LogLevel(enum.StrEnum):
    """The worker's logging levels."""

    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("metrics")(serve_metrics)
    app.command()(worker)
    app.command()(demo)


def serve_metrics(
    ctx: typer.Context,
    port: Annotated[
        int,
        typer.Option(min=0, max=65535, help="TCP port (0: any free port).", show_default=True),
    ] = 9464,
    host: Annotated[str, typer.Option(help="Address to listen on.", show_default=True)] = "0.0.0.0",
    stale_lock_seconds: Annotated[
        float, typer.Option(help="Lock age counted as stale.", show_default=True)
    ] = metrics.DEFAULT_STALE_LOCK_SECONDS,
    error_groups: Annotated[
        int,
        typer.Option(
            min=0,
            max=metrics.MAX_ERROR_GROUPS,
            help="Largest error groups exported (retryqueue_error_group_items; 0: none).",
            show_default=True,
        ),
    ] = metrics.DEFAULT_ERROR_GROUPS,
) -> None:
    """Serve the queue's figures on http://HOST:PORT/metrics for Prometheus (Ctrl-C stops)."""
    current = state(ctx)
    collector = metrics.QueueCollector(
        current.engine(),
        current.queue(),
        stale_lock_seconds=stale_lock_seconds,
        error_groups=error_groups,
    )
    collector.check()
    registry = CollectorRegistry()
    registry.register(collector)
    _serve(ctx, registry, host, port, "queue metrics")


def _serve(
    ctx: typer.Context, registry: CollectorRegistry, host: str, port: int, what: str
) -> None:
    current = state(ctx)
    try:
        server = metrics.serve(registry, host=host, port=port)
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    typer.echo(f"serving {what} on {server.url} for {current.display_url}", err=True)
    try:
        current.deps.serve_until(server.url)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def worker(
    ctx: typer.Context,
    handlers: Annotated[
        str,
        typer.Argument(
            metavar="HANDLERS",
            help="Where the handlers are: 'package.module:attribute' naming a Router, a "
            "mapping of event type to handler, a handler function or a factory.",
        ),
    ],
    worker_id: Annotated[str | None, typer.Option(help="Default: host-pid-random.")] = None,
    batch_size: Annotated[int, typer.Option(show_default=True)] = 10,
    lock_timeout: Annotated[float, typer.Option(show_default=True)] = 300,
    poll_interval: Annotated[float, typer.Option(show_default=True)] = 1.0,
    concurrency: Annotated[int, typer.Option(show_default=True)] = 1,
    heartbeat_interval: Annotated[
        float | None, typer.Option(help="Default: lock_timeout / 3.")
    ] = None,
    shutdown_grace: Annotated[float, typer.Option(show_default=True)] = 30.0,
    prefetch: Annotated[
        int | None, typer.Option(help="Items claimed ahead of the handlers. Default: batch size.")
    ] = None,
    flush_age: Annotated[
        float,
        typer.Option(show_default=True, help="Seconds an outcome may wait for batch-mates."),
    ] = 0.005,
    ready_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a claimed item may wait for a free handler before it is given "
            "back. Default: min(lock_timeout / 2, 30)."
        ),
    ] = None,
    in_flight: Annotated[
        int | None,
        typer.Option(
            help="Pipeline transactions (record outcomes, claim more) running at once, each "
            "on its own connection. Default: up to 2 on PostgreSQL, the second only while "
            "it pays; else 1. A number fixes it."
        ),
    ] = None,
    listen: Annotated[
        bool, typer.Option("--listen/--no-listen", help="Wake on PostgreSQL NOTIFY.")
    ] = True,
    use_asyncio: Annotated[
        bool,
        typer.Option(
            "--asyncio", help="Run the asyncio worker (async def handlers; async driver)."
        ),
    ] = False,
    pgbouncer: Annotated[
        bool,
        typer.Option("--pgbouncer", help="The URL is PgBouncer in transaction pooling mode."),
    ] = False,
    listen_url: Annotated[
        str | None,
        typer.Option(help="A direct PostgreSQL URL for LISTEN (with --pgbouncer)."),
    ] = None,
    breaker_failures: Annotated[
        int | None,
        typer.Option(help="Circuit breaker: open a plugin's circuit after N failures in a row."),
    ] = None,
    breaker_cooldown: Annotated[
        float, typer.Option(help="Circuit breaker: first cool-down in seconds.")
    ] = 30.0,
    once: Annotated[bool, typer.Option("--once", help="Process one batch, then exit.")] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=0, max=65535, help="Serve worker metrics on this port."),
    ] = None,
    metrics_host: Annotated[str, typer.Option(show_default=True)] = "0.0.0.0",
    log_level: Annotated[
        LogLevel, typer.Option(case_sensitive=False, show_default=True)
    ] = LogLevel.INFO,
    as_json: JsonOption = False,
) -> None:
    """Run a worker with the handlers at HANDLERS until SIGTERM/Ctrl-C (or --once)."""
    from retryqueue.circuits import CircuitBreaker
    from retryqueue.worker import load_router

    logging.basicConfig(
        level=log_level.value,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import_from_cwd()
    current = state(ctx)
    current.require_existing_database()
    router = load_router(handlers)
    worker_metrics = metrics.WorkerMetrics()
    breaker = None
    if breaker_failures is not None:
        breaker = CircuitBreaker(failure_threshold=breaker_failures, cooldown=breaker_cooldown)
    settings = WorkerOptions(
        worker_id=worker_id,
        batch_size=batch_size,
        lock_timeout=lock_timeout,
        poll_interval=poll_interval,
        concurrency=concurrency,
        heartbeat_interval=heartbeat_interval,
        shutdown_grace=shutdown_grace,
        prefetch=prefetch,
        flush_age=flush_age,
        ready_timeout=ready_timeout,
        in_flight=in_flight,
        listen=listen,
        observers=(worker_metrics.observe,),
        breaker=breaker,
    )
    connection = _Connection(current.url, pgbouncer, listen_url)
    server = None
    if metrics_port is not None:
        try:
            server = metrics.serve(worker_metrics.registry, host=metrics_host, port=metrics_port)
        except OSError as exc:
            raise CliError(
                f"cannot listen on {metrics_host}:{metrics_port}: {exc.strerror or exc}"
            ) from exc
        typer.echo(f"serving worker metrics on {server.url}", err=True)

    def announce(worker_id: str) -> None:
        kind = "asyncio worker" if use_asyncio else "worker"
        routes = ", ".join(route.pattern for route in router) or "no routes"
        mode = "one batch" if once else "until SIGTERM/Ctrl-C"
        typer.echo(
            f"{kind} {worker_id} started on {current.display_url}: handlers {handlers} "
            f"({routes}), batch {batch_size}, concurrency {concurrency}; running {mode}",
            err=True,
        )

    try:
        if use_asyncio:
            report = asyncio.run(
                _run_async(current.queue(), connection, router, settings, once, announce)
            )
        else:
            report = _run_threads(current.queue(), connection, router, settings, once, announce)
    finally:
        if server is not None:
            server.stop()
    if as_json:
        print_json(report)
    else:
        typer.echo(
            ", ".join(f"{name} {getattr(report, name)}" for name in report.__dataclass_fields__)
        )


@dataclass(frozen=True)
class _Connection:
    """Where the worker connects: the URL, through PgBouncer or not, and LISTEN's URL."""

    url: URL
    pgbouncer: bool
    listen_url: str | None

    def engines(self, factory: Callable[..., E]) -> tuple[E, E | None]:
        """The worker's engine and, with a listen URL, the direct one for LISTEN."""
        engine = _engine(factory, self.url, pgbouncer=self.pgbouncer)
        if self.listen_url is None:
            return engine, None
        return engine, _engine(factory, self.listen_url)


def _run_threads(
    queue: RetryQueue,
    connection: _Connection,
    router: Router,
    settings: WorkerOptions,
    once: bool,
    announce: Callable[[str], None],
) -> RunReport:
    from sqlalchemy.orm import sessionmaker

    from retryqueue.worker import Worker

    engine, listen_engine = connection.engines(create_engine)
    try:
        sessions = sessionmaker(engine, expire_on_commit=False)
        runner = Worker(queue, sessions, router, listen_engine=listen_engine, **settings)
        announce(runner.worker_id)
        return runner.run_once() if once else runner.run(install_signals=True)
    finally:
        for made in filter(None, (engine, listen_engine)):
            made.dispose()


async def _run_async(
    queue: RetryQueue,
    connection: _Connection,
    router: Router,
    settings: WorkerOptions,
    once: bool,
    announce: Callable[[str], None],
) -> RunReport:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from retryqueue.worker.async_worker import AsyncWorker

    engine, listen_engine = connection.engines(create_async_engine)
    try:
        sessions = async_sessionmaker(engine, expire_on_commit=False)
        runner = AsyncWorker(queue, sessions, router, listen_engine=listen_engine, **settings)
        announce(runner.worker_id)
        return await (runner.run_once() if once else runner.run(install_signals=True))
    finally:
        await asyncio.gather(*(made.dispose() for made in filter(None, (engine, listen_engine))))


def _engine(factory: Callable[..., E], url: URL | str, **kwargs: Any) -> E:
    try:
        return factory(url, **kwargs)
    except (ArgumentError, ImportError) as exc:
        raise CliError(f"invalid database URL: {_first_line(exc)}") from exc


def demo(
    ctx: typer.Context,
    keep: Annotated[bool, typer.Option("--keep", help="Keep the temporary database.")] = False,
    items: Annotated[int, typer.Option(help="How many items.", show_default=True)] = 60,
    seed: Annotated[int, typer.Option(help="Random seed of the mix.", show_default=True)] = 7,
    as_json: JsonOption = False,
) -> None:
    """Watch the retry story (backoff, retry, dead letter) on a temporary SQLite database.

    With --database-url (or RETRYQUEUE_DATABASE_URL) it runs on that (empty) database instead.
    """
    from retryqueue.demo import run_demo

    url = _explicit_root_url(ctx)
    folder = None
    if url is None:
        folder = tempfile.mkdtemp(prefix="retryqueue-demo-")
        url = f"sqlite:///{folder}/demo.db"
    current = state(ctx)
    current.raw_url = url
    out = console(stderr=as_json)
    try:
        engine = current.engine()
        result = run_demo(engine, out, items=items, seed=seed)
        with current.session() as session:
            queue = current.queue()
            stats, alerts = queue.stats(session), queue.alerts(session)
        engine.dispose()
    finally:
        if folder is not None and not keep:
            shutil.rmtree(folder, ignore_errors=True)
    if not result.finished:
        raise CliError(f"the demo did not finish within its time limit: {result.statuses}")
    kept = current.display_url if (folder is None or keep) else None
    if as_json:
        print_json(
            {
                "elapsed_seconds": round(result.elapsed_seconds, 2),
                "statuses": result.statuses,
                "database": kept,
                "stats": stats,
                "alerts": alerts,
            }
        )
        return
    out.print()
    print_table(stats_table(stats), out)
    print_table(alerts_table(alerts), out)
    summary = ", ".join(f"{name} {count}" for name, count in sorted(result.statuses.items()))
    out.print(f"demo finished in {result.elapsed_seconds:.1f} s: {summary}")
    if kept:
        out.print(f"database: {kept}  (try: retryqueue --database-url {kept} dead-letters)")


def _explicit_root_url(ctx: typer.Context) -> str | None:
    root = ctx.find_root()
    source = root.get_parameter_source("database_url")
    if source is None or source.name == "DEFAULT":
        return None
    return state(ctx).raw_url
