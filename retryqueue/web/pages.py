"""The dashboard's pages (GET only; nothing here writes)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from retryqueue import browsing, registry
from retryqueue.circuits import circuit_events, circuit_states
from retryqueue.hourly import OutcomeCount, totals
from retryqueue.models import RetryStatus
from retryqueue.web._shared import Settings, bar_chart, render, settings_of
from retryqueue.web.forms import encode_cursor, parse_id, parse_query, query_params
from retryqueue.web.rollup import roll_up_some

__all__ = [
    "audit_page",
    "circuits_page",
    "dead_letters_page",
    "item_detail_page",
    "items_page",
    "overview_live",
    "overview_page",
    "throughput_page",
    "workers_page",
]


def _roll_up(settings: Settings) -> None:
    """Roll up at most ``settings.roll_up_per_view`` closed hours the charts need (the
    newest missing ones): a page's cost stays bounded; the hours left are shown as not
    counted yet, for a later view or the background roll-up (:mod:`retryqueue.web.rollup`).
    """
    roll_up_some(settings.sessions, settings.queue, settings.chart_hours, settings.roll_up_per_view)


def _overview_context(request: Request) -> dict[str, object]:
    settings = settings_of(request)
    _roll_up(settings)
    with settings.reading() as session:
        figures = browsing.overview(
            session,
            settings.queue.now(session),
            cap=settings.count_cap,
            hours=settings.chart_hours,
            stale_lock_seconds=settings.stale_lock_seconds,
        )
        circuits = [state for state in circuit_states(session) if state.status.value != "closed"]
    return {
        "o": figures,
        "statuses": [status.value for status in RetryStatus],
        "bars": bar_chart(
            figures.hourly, figures.now, settings.chart_hours, not_counted=figures.not_counted
        ),
        "not_counted": len(figures.not_counted),
        "open_circuits": circuits,
        "refresh_seconds": settings.refresh_seconds,
    }


def overview_page(request: Request) -> Response:
    """Counts, backlog, lag, the outcomes chart, success by type, circuits and alerts."""
    return render(request, "overview.html", {"page": "overview", **_overview_context(request)})


def overview_live(request: Request) -> Response:
    """The overview's live part alone, fetched every few seconds by dashboard.js."""
    return render(request, "_live.html", _overview_context(request))


def items_page(request: Request) -> Response:
    """Items by filter, sortable, keyset-paginated, selectable."""
    settings = settings_of(request)
    query = parse_query(list(request.query_params.multi_items()))
    with settings.reading() as session:
        page = browsing.item_page(session, query)
        everything = replace(query, after=None, before=None)
        total = browsing.count_matching(session, everything, settings.count_cap)
    next_link = previous_link = None
    if page.next_after is not None:
        pairs = [*query_params(query), ("after", encode_cursor(page.next_after, query.sort))]
        next_link = f"{request.url_for('items')}?{urlencode(pairs)}"
    if page.previous_before is not None:
        pairs = [*query_params(query), ("before", encode_cursor(page.previous_before, query.sort))]
        previous_link = f"{request.url_for('items')}?{urlencode(pairs)}"
    return render(
        request,
        "items.html",
        {
            "page": "items",
            "query": query,
            "rows": page.rows,
            "total": total,
            "next_link": next_link,
            "previous_link": previous_link,
            "filter_string": urlencode(query_params(query)),
            "statuses": [status.value for status in RetryStatus],
        },
    )


def item_detail_page(request: Request) -> Response:
    """Every column of one item, its payload and its attempt timeline."""
    item_id = parse_id(request.path_params["item_id"])
    with settings_of(request).reading() as session:
        detail = browsing.item_detail(session, item_id)
    return render(request, "item.html", {"page": "items", "item_id": item_id, "d": detail})


def dead_letters_page(request: Request) -> Response:
    """Dead letters grouped by error code and normalised message."""
    with settings_of(request).reading() as session:
        groups = browsing.error_groups(session)
    return render(request, "dead_letters.html", {"page": "dead", "groups": groups})


def circuits_page(request: Request) -> Response:
    """Every circuit's state, the keys paused or rate-limited now (a pause stops a key like
    an open circuit: both in one place, as ``retryqueue circuits`` shows them) and the
    newest transitions of the audit trail."""
    settings = settings_of(request)
    with settings.reading() as session:
        states = circuit_states(session)
        held = settings.queue.key_limits(session)
        events = circuit_events(session, limit=100)
    context = {"page": "circuits", "states": states, "limits": held, "events": events}
    return render(request, "circuits.html", context)


def audit_page(request: Request) -> Response:
    """What was done from the dashboard: who, when, what selection, how many."""
    raw = request.query_params.get("before")
    before = parse_id(raw, "before") if raw else None
    with settings_of(request).reading() as session:
        entries = browsing.audit_log(session, 50, before)
    older = entries[-1].id if len(entries) == 50 else None
    return render(request, "audit.html", {"page": "audit", "entries": entries, "older": older})


def throughput_page(request: Request) -> Response:
    """Completions and failures per hour, in total and per plugin (closed hours not rolled
    up yet are listed as not counted)."""
    settings = settings_of(request)
    _roll_up(settings)
    with settings.reading() as session:
        now = settings.queue.now(session)
        chart = browsing.chart_outcomes(session, now, settings.chart_hours, per_plugin=True)
    total: list[tuple[datetime, OutcomeCount | None]] = [
        (row.hour, row) for row in totals(chart.rows)
    ]
    total += [(hour, None) for hour in chart.not_counted]
    return render(
        request,
        "throughput.html",
        {
            "page": "throughput",
            "total": sorted(total, key=lambda entry: entry[0], reverse=True),
            "per_plugin": chart.rows,
            "not_counted": len(chart.not_counted),
        },
    )


def workers_page(request: Request) -> Response:
    """Live workers: where they run, their settings, heartbeat, what they hold, last hour."""
    settings = settings_of(request)
    with settings.reading() as session:
        now = settings.queue.now(session)
        workers = registry.live_workers(session, now)
    return render(request, "workers.html", {"page": "workers", "workers": workers})
