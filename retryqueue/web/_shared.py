"""What every dashboard route shares: the settings, sessions, rendering and the chart."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from retryqueue.browsing import OutcomeCount
from retryqueue.circuits import CircuitBreaker
from retryqueue.queue import RetryQueue
from retryqueue.web.access import ACT, CSRF_COOKIE, CSRF_FIELD, new_csrf_token
from retryqueue.web.forms import query_string
from retryqueue.web.rollup import PER_VIEW

__all__ = [
    "HERE",
    "Settings",
    "bar_chart",
    "render",
    "require_action",
    "settings_of",
]

HERE = Path(__file__).parent


@dataclass
class Settings:
    """The dashboard's configuration, kept on ``app.state.dashboard``."""

    sessions: sessionmaker[Session]
    queue: RetryQueue
    breaker: CircuitBreaker
    read_only: bool
    count_cap: int = 10_000
    max_action_items: int = 10_000
    default_rate: float = 50.0
    refresh_seconds: float = 5.0
    chart_hours: int = 24
    roll_up_per_view: int = PER_VIEW
    stale_lock_seconds: float = 3600.0
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    templates: Jinja2Templates = field(init=False)

    def __post_init__(self) -> None:
        env = Environment(
            loader=FileSystemLoader(str(HERE / "templates")),
            autoescape=select_autoescape(default=True, default_for_string=True),
        )
        self.templates = Jinja2Templates(env=env)
        env.filters["when"] = _when
        env.filters["age"] = _age
        env.filters["capped"] = self.capped
        env.globals["query_string"] = query_string

    def capped(self, count: int) -> str:
        """A capped count as shown: ``10,000+`` when the cap was reached."""
        return f"{self.count_cap:,}+" if count > self.count_cap else f"{count:,}"

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for a page's reads (rolled back at the end)."""
        with self.sessions() as session:
            yield session

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A session whose transaction commits when the block succeeds."""
        with self.sessions() as session, session.begin():
            yield session


def settings_of(request: Request) -> Settings:
    """The dashboard settings of the app serving ``request``."""
    settings: Settings = request.app.state.dashboard
    return settings


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def render(
    request: Request, template: str, context: dict[str, Any], status_code: int = 200
) -> Response:
    """A page, with the CSRF token (and its cookie, the first time)."""
    token = request.cookies.get(CSRF_COOKIE) or new_csrf_token()
    can_act = ACT in request.auth.scopes if "auth" in request.scope else False
    response = settings_of(request).templates.TemplateResponse(
        request,
        template,
        {
            "csrf_field": CSRF_FIELD,
            "csrf_token": token,
            "can_act": can_act,
            "user": request.user.display_name if "user" in request.scope else "",
            **context,
        },
        status_code=status_code,
    )
    if request.cookies.get(CSRF_COOKIE) != token:
        path = request.scope.get("root_path") or "/"
        response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", path=path)
    return response


def require_action(request: Request) -> None:
    """Refuse (403) a caller who may only read."""
    if ACT not in request.auth.scopes:
        raise HTTPException(403, "this dashboard (or your credential) is read-only")


@dataclass(frozen=True, slots=True)
class Bar:
    """One hour of the chart: where it is drawn and what it counts."""

    x: float
    hour: datetime
    completed: int
    failed: int
    completed_height: float
    failed_height: float
    not_counted: bool = False
    """A closed hour not rolled up yet: drawn hatched, counted by a later view."""


def bar_chart(
    hourly: list[OutcomeCount],
    now: datetime,
    hours: int,
    height: float = 120.0,
    not_counted: Collection[datetime] = (),
) -> list[Bar]:
    """Bars for the last ``hours`` UTC hours (empty hours included), scaled to ``height``;
    the hours in ``not_counted`` are marked as such."""
    current = now.replace(minute=0, second=0, microsecond=0)
    by_hour = {row.hour.replace(tzinfo=now.tzinfo): row for row in hourly}
    pending = {hour.replace(tzinfo=now.tzinfo) for hour in not_counted}
    slots = [current - timedelta(hours=hours - 1 - n) for n in range(hours)]
    tallest = max([1] + [row.completed + row.failed for row in hourly])
    bars = []
    for n, hour in enumerate(slots):
        row = by_hour.get(hour)
        done, failed = (row.completed, row.failed) if row else (0, 0)
        bars.append(
            Bar(
                x=n * 24.0,
                hour=hour,
                completed=done,
                failed=failed,
                completed_height=height * done / tallest,
                failed_height=height * failed / tallest,
                not_counted=hour in pending,
            )
        )
    return bars
