"""The dashboard's actions: POST only, CSRF-checked, refused to read-only callers.

Replay and purge always go through a preview (how many, a sample, the pace) before they
run; running writes an audit record first, then works through the ids in paced chunks,
one transaction each (like ``retryqueue replay --rate``), updating the record as it goes.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from starlette.background import BackgroundTask
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from retryqueue import browsing
from retryqueue.errors import InvalidArgument, RetryQueueError
from retryqueue.models import TERMINAL_STATUSES
from retryqueue.results import ItemFilter, ItemQuery
from retryqueue.web._shared import Settings, render, require_action, settings_of
from retryqueue.web.access import CSRF_FIELD, csrf_matches
from retryqueue.web.forms import (
    ACTIONS,
    parse_filter_field,
    parse_ids,
    parse_rate,
    query_params,
)

__all__ = ["circuit_action", "preview_action", "run_action", "run_paced"]

logger = logging.getLogger("retryqueue.web")

_SCOPES = ("item", "selection", "filter")
_SAMPLE = 10
_MAX_CHUNK = 100


async def _checked_form(request: Request) -> FormData:
    require_action(request)
    form = await request.form()
    if not csrf_matches(request, form.get(CSRF_FIELD)):
        raise HTTPException(403, "the form's CSRF token is missing or wrong: reload the page")
    return form


def _selection(form: FormData) -> tuple[str, str, ItemQuery, dict[str, Any]]:
    """(action, scope, query, description for the audit record) of an action form."""
    do = str(form.get("do") or "")
    action, _, scope = do.partition(":")
    if action not in ACTIONS or scope not in _SCOPES:
        raise InvalidArgument("do", "expected replay or purge of an item, selection or filter")
    if scope == "filter":
        query = parse_filter_field(form.get("filter", ""))
        query = replace(query, after=None, before=None)
        described: dict[str, Any] = {"filter": urlencode(query_params(query))}
    else:
        ids = parse_ids(list(form.getlist("id")))
        if not ids:
            raise InvalidArgument("id", "select at least one item")
        query = ItemQuery(ids=ids)
        described = {"ids": list(ids[:100]), "id_count": len(ids)}
    return action, scope, query, described


async def preview_action(request: Request) -> Response:
    """What a replay or purge would do: how many items, a sample, the pace; and a confirm."""
    form = await _checked_form(request)
    action, scope, query, described = _selection(form)
    settings = settings_of(request)
    rate = parse_rate(form.get("rate"), settings.default_rate)
    with settings.reading() as session:
        ids = browsing.action_ids(session, query, action, settings.max_action_items)
        sample = browsing.item_page(
            session, ItemQuery(ids=tuple(ids[:_SAMPLE]), sort="id", descending=False, limit=_SAMPLE)
        ).rows
    return render(
        request,
        "preview.html",
        {
            "page": "items",
            "action": action,
            "scope": scope,
            "count": len(ids),
            "capped": len(ids) >= settings.max_action_items,
            "cap": settings.max_action_items,
            "sample": sample,
            "rate": rate,
            "seconds": len(ids) / rate,
            "form_fields": [
                (key, str(value))
                for key, value in form.multi_items()
                if key in ("do", "filter", "id")
            ],
            "described": described,
        },
    )


async def run_action(request: Request) -> Response:
    """Run a previewed replay or purge: audit it, then work through it in paced chunks."""
    form = await _checked_form(request)
    if form.get("confirmed") != "yes":
        raise InvalidArgument("confirmed", "an action runs only from its preview page")
    action, _scope, query, described = _selection(form)
    settings = settings_of(request)
    rate = parse_rate(form.get("rate"), settings.default_rate)
    actor = request.user.display_name
    with settings.writing() as session:
        ids = browsing.action_ids(session, query, action, settings.max_action_items)
        audit_id = browsing.record_action(
            session,
            settings.queue.now(session),
            actor=actor,
            action=action,
            selection={**described, "rate": rate},
            requested=len(ids),
        )
    logger.info("%s: %s of %d item(s) (audit %d)", actor, action, len(ids), audit_id)
    task = BackgroundTask(run_paced, settings, audit_id, action, ids, rate, actor)
    target = f"{request.url_for('audit')}?highlight={audit_id}"
    return RedirectResponse(target, status_code=303, background=task)


def run_paced(
    settings: Settings, audit_id: int, action: str, ids: list[int], rate: float, actor: str
) -> int:
    """Replay or purge ``ids`` at ``rate`` items per second; returns how many changed.

    Item ``n`` is released no earlier than ``n / rate`` seconds after the start; each chunk
    commits on its own and updates the audit record.
    """
    size = max(1, min(int(rate), _MAX_CHUNK))
    started = settings.monotonic()
    done = 0
    sent = 0
    detail = "done"
    try:
        for start in range(0, len(ids), size):
            wait = started + sent / rate - settings.monotonic()
            if wait > 0:
                settings.sleep(wait)
            chunk = ids[start : start + size]
            sent += len(chunk)
            with settings.writing() as session:
                if action == "replay":
                    # The ids were chosen by action_ids; completed ones only when asked for.
                    selection = ItemFilter(statuses=TERMINAL_STATUSES, ids=chunk)
                    changed = settings.queue.requeue(session, selection, requested_by=actor)
                else:
                    changed = settings.queue.purge(session, chunk)
                done += len(changed)
                last = start + size >= len(ids)
                browsing.finish_action(
                    session,
                    settings.queue.now(session),
                    audit_id,
                    done,
                    finished=last,
                    detail="done" if last else "running",
                )
    except RetryQueueError as exc:
        detail = f"stopped: {str(exc)[:200]}"
        logger.warning("audit %d stopped after %d item(s): %s", audit_id, done, exc)
        with settings.writing() as session:
            browsing.finish_action(
                session, settings.queue.now(session), audit_id, done, finished=True, detail=detail
            )
    if not ids:
        with settings.writing() as session:
            browsing.finish_action(
                session, settings.queue.now(session), audit_id, 0, finished=True, detail=detail
            )
    return done


async def circuit_action(request: Request) -> Response:
    """Open or close a circuit by hand (audited in both trails)."""
    form = await _checked_form(request)
    verb = request.path_params["verb"]
    if verb not in ("open", "close"):
        raise HTTPException(404, "no such circuit action")
    key = str(form.get("key") or "").strip()
    if not key or len(key) > 511:
        raise InvalidArgument("key", "expected a circuit key of 1 to 511 characters")
    settings = settings_of(request)
    actor = request.user.display_name
    cooldown = None
    if verb == "open" and form.get("cooldown"):
        try:
            cooldown = float(str(form.get("cooldown")))
        except ValueError:
            raise InvalidArgument("cooldown", "expected a number of seconds") from None
    with settings.writing() as session:
        if verb == "open":
            settings.breaker.open(session, key, cooldown=cooldown, actor=actor)
        else:
            settings.breaker.close(session, key, actor=actor)
        at = settings.queue.now(session)
        audit_id = browsing.record_action(
            session, at, actor=actor, action=f"circuit_{verb}", selection={"key": key}, requested=1
        )
        browsing.finish_action(session, at, audit_id, 1, finished=True, detail="done")
    return RedirectResponse(str(request.url_for("circuits")), status_code=303)
