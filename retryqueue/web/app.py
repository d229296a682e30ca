"""``create_app``: the dashboard as a Starlette (ASGI) application."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.applications import Starlette
from starlette.authentication import AuthenticationError
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from retryqueue import validation as check
from retryqueue.circuits import CircuitBreaker
from retryqueue.errors import DatabaseError, InvalidArgument, ItemNotFound, RetryQueueError
from retryqueue.queue import RetryQueue
from retryqueue.web import actions, pages
from retryqueue.web._shared import HERE, Settings, render
from retryqueue.web.access import Credentials, DashboardAuth
from retryqueue.web.rollup import keep_rolled_up

__all__ = ["create_app"]

logger = logging.getLogger("retryqueue.web")


def _unauthorized(conn: HTTPConnection, exc: AuthenticationError) -> Response:
    return PlainTextResponse(
        f"401 Unauthorized: {exc}",
        status_code=401,
        headers={"WWW-Authenticate": 'Basic realm="retryqueue", charset="UTF-8"'},
    )


def _error_page(request: Request, status: int, title: str, message: str) -> Response:
    try:
        return render(
            request, "error.html", {"page": "", "title": title, "message": message}, status
        )
    except Exception:  # the page itself failed: plain text, still no traceback
        return PlainTextResponse(f"{status} {title}: {message}", status_code=status)


async def _bad_input(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ItemNotFound):
        return _error_page(request, 404, "Not found", str(exc))
    if isinstance(exc, DatabaseError):
        logger.warning("dashboard: %s", exc)
        return _error_page(request, 503, "Database unavailable", str(exc))
    if isinstance(exc, InvalidArgument):
        return _error_page(request, 400, "Bad request", str(exc))
    return _error_page(request, 400, "Refused", str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    titles = {403: "Forbidden", 404: "Not found", 405: "Method not allowed"}
    return _error_page(request, exc.status_code, titles.get(exc.status_code, "Error"), exc.detail)


async def _server_error(request: Request, exc: Exception) -> Response:
    logger.error("dashboard: unexpected %s on %s", type(exc).__name__, request.url.path)
    return PlainTextResponse("500 Internal error: see the server log", status_code=500)


def create_app(
    database: Engine | sessionmaker[Session],
    *,
    read_only: bool = False,
    credentials: Credentials | None = None,
    queue: RetryQueue | None = None,
    breaker: CircuitBreaker | None = None,
    count_cap: int = 10_000,
    max_action_items: int = 10_000,
    default_rate: float = 50.0,
    refresh_seconds: float = 5.0,
    roll_up_every: float | None = None,
    **settings: Any,
) -> Starlette:
    """The dashboard as an ASGI app, to serve with uvicorn or mount under a prefix.

    :param database: an Engine or a sessionmaker of the queue's database.
    :param read_only: show everything, refuse every action (403).
    :param credentials: when given, every request needs one of them (basic auth or bearer
        token); a read-only credential may look but not act. None: no authentication,
        for a dashboard reachable from this machine only.
    :param queue: the :class:`RetryQueue` actions use (its clock and TTL); default one.
    :param breaker: the :class:`CircuitBreaker` whose circuits are opened/closed by hand.
    :param count_cap: counts stop there (shown as ``10,000+``).
    :param max_action_items: at most this many items per replay or purge.
    :param default_rate: items per second of a paced replay or purge.
    :param refresh_seconds: how often the overview refreshes its figures.
    :param roll_up_every: when given, the app's lifespan rolls up the charts' closed hours
        in the background every so many seconds (:func:`keep_rolled_up`; ``retryqueue
        dashboard`` uses 60), and page views roll up nothing (an hour the background has
        not reached yet shows as "not counted yet"). Without it, each page view rolls up at
        most one closed hour (the newest missing one; ``roll_up_per_view=0``: none) and
        shows the others as "not counted yet".

    Mount it in a Starlette or FastAPI app with ``app.mount("/queue", create_app(engine))``.
    Starlette does not run a mounted app's lifespan: to keep the charts rolled up there,
    enter ``keep_rolled_up(engine)`` in the host application's own lifespan and pass
    ``roll_up_per_view=0``.
    """
    sessions = (
        database
        if isinstance(database, sessionmaker)
        else sessionmaker(database, expire_on_commit=False)
    )
    if roll_up_every is not None:  # the background rolls up: no page pays for it
        settings.setdefault("roll_up_per_view", 0)
    config = Settings(
        sessions=sessions,
        queue=queue or RetryQueue(),
        breaker=breaker or CircuitBreaker(),
        read_only=read_only,
        count_cap=count_cap,
        max_action_items=max_action_items,
        default_rate=default_rate,
        refresh_seconds=refresh_seconds,
        **settings,
    )
    routes = [
        Route("/", pages.overview_page, name="overview"),
        Route("/overview/live", pages.overview_live, name="overview_live"),
        Route("/items", pages.items_page, name="items"),
        Route("/items/{item_id}", pages.item_detail_page, name="item"),
        Route("/dead-letters", pages.dead_letters_page, name="dead_letters"),
        Route("/circuits", pages.circuits_page, name="circuits"),
        Route("/throughput", pages.throughput_page, name="throughput"),
        Route("/workers", pages.workers_page, name="workers"),
        Route("/audit", pages.audit_page, name="audit"),
        Route("/actions/preview", actions.preview_action, methods=["POST"], name="preview"),
        Route("/actions/run", actions.run_action, methods=["POST"], name="run"),
        Route("/circuits/{verb}", actions.circuit_action, methods=["POST"], name="circuit_action"),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    lifespan = None
    if roll_up_every is not None:
        every = check.seconds("roll_up_every", roll_up_every, allow_zero=False)

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with keep_rolled_up(
                sessions, every=every, hours=config.chart_hours, queue=config.queue
            ) as loop:
                app.state.roll_up = loop
                yield

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(
                AuthenticationMiddleware,
                backend=DashboardAuth(credentials, read_only=read_only),
                on_error=_unauthorized,
            )
        ],
        exception_handlers={
            RetryQueueError: _bad_input,
            HTTPException: _http_error,
            Exception: _server_error,
        },
    )
    app.state.dashboard = config
    return app
