"""Dashboard actions over HTTP: previews, paced runs, CSRF, read-only, audit, circuits."""

from __future__ import annotations

import re
from typing import Any

import pytest
from sqlalchemy import func, select
from starlette.testclient import TestClient

from retryqueue.models import RetryHistory
from retryqueue.web import create_app
from tests.web.conftest import CSRF_FIELD, Seeded, csrf_of

COUNT = re.compile(r'id="preview-count">(\d+)<')


def preview(client: TestClient, **form: Any) -> int:
    """The item count a preview shows."""
    response = client.post("/actions/preview", data={CSRF_FIELD: csrf_of(client), **form})
    assert response.status_code == 200, response.text
    found = COUNT.search(response.text)
    assert found, response.text
    return int(found.group(1))


def run(client: TestClient, **form: Any) -> Any:
    """Confirm an action; returns the final response (the audit page)."""
    data = {CSRF_FIELD: csrf_of(client), "confirmed": "yes", "rate": "1000", **form}
    return client.post("/actions/run", data=data, follow_redirects=True)


def affected(page: str) -> list[str]:
    """The "done" column of the audit page, newest first."""
    return re.findall(r'class="num affected">([^<]*)<', page)


class TestReplayAndPurge:
    """A preview counts exactly what the action then does; both are audited."""

    def test_replay_everything_matching_a_filter(self, client: TestClient, seeded: Seeded) -> None:
        dead = seeded.add("dead", 4, dead="boom {n}", plugin_name="billing")
        others = seeded.add("other", 2, dead="boom {n}", plugin_name="mail")
        seeded.add("waiting", 2, plugin_name="billing")
        form = {"do": "replay:filter", "filter": "plugin=billing"}
        assert preview(client, **form) == 4
        page = run(client, **form)
        assert page.status_code == 200 and "/audit" in str(page.url)
        assert affected(page.text) == ["4"]
        statuses = seeded.statuses()
        assert {statuses[item] for item in dead} == {"pending"}
        assert {statuses[item] for item in others} == {"dead_letter"}
        assert "plugin=billing" in page.text and "replay" in page.text
        with seeded.sessions() as session:
            requeued = session.scalar(select(func.count()).where(RetryHistory.status == "requeued"))
        assert requeued == 4

    def test_replay_a_selection_and_one_item(self, client: TestClient, seeded: Seeded) -> None:
        dead = seeded.add("dead", 4, dead="boom")
        waiting = seeded.add("waiting", 1)
        selection = {"do": "replay:selection", "id": [str(dead[0]), str(dead[1]), str(waiting[0])]}
        assert preview(client, **selection) == 2  # the pending one is not replayable
        assert affected(run(client, **selection).text) == ["2"]
        one = {"do": "replay:item", "id": str(dead[2])}
        assert preview(client, **one) == 1
        run(client, **one)
        statuses = seeded.statuses()
        assert [statuses[item] for item in dead] == ["pending", "pending", "pending", "dead_letter"]

    def test_purge_with_preview(self, client: TestClient, seeded: Seeded) -> None:
        seeded.add("dead", 3, dead="gone")
        kept = seeded.add("waiting", 2, event_type="keep.me")
        form = {"do": "purge:filter", "filter": "status=dead_letter"}
        assert preview(client, **form) == 3
        assert affected(run(client, **form).text) == ["3"]
        assert sorted(seeded.statuses()) == kept

    def test_action_is_capped(self, sessions: Any, seeded: Seeded) -> None:
        seeded.add("dead", 5, dead="boom")
        with TestClient(create_app(seeded.sessions, max_action_items=3)) as capped:
            form = {"do": "replay:filter", "filter": "status=dead_letter"}
            assert preview(capped, **form) == 3
            assert affected(run(capped, **form).text) == ["3"]
        assert sorted(seeded.statuses().values()).count("dead_letter") == 2

    def test_paced_like_replay_rate(self, sessions: Any, seeded: Seeded) -> None:
        seeded.add("dead", 5, dead="boom")
        clock = [0.0]
        waits: list[float] = []

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            clock[0] += seconds

        app = create_app(seeded.sessions, sleep=sleep, monotonic=lambda: clock[0])
        with TestClient(app) as paced:
            form = {"do": "replay:filter", "filter": "status=dead_letter"}
            assert affected(run(paced, **{**form, "rate": "2"}).text) == ["5"]
        # Chunks of 2 at 2/s: items 0-1 at once, 2-3 after 1 s, 4 after 2 s.
        assert waits == [1.0, 1.0]

    def test_nothing_runs_without_the_preview(self, client: TestClient, seeded: Seeded) -> None:
        seeded.add("dead", 1, dead="boom")
        data = {CSRF_FIELD: csrf_of(client), "do": "replay:filter", "filter": "status=dead_letter"}
        response = client.post("/actions/run", data=data)
        assert response.status_code == 400 and "preview" in response.text
        assert set(seeded.statuses().values()) == {"dead_letter"}

    @pytest.mark.parametrize(
        "form",
        [
            {"do": "explode:filter", "filter": ""},
            {"do": "replay:selection"},
            {"do": "replay:selection", "id": "12x"},
            {"do": "replay:filter", "filter": "status=bogus"},
            {"do": "replay:filter", "filter": "", "rate": "0"},
            {"do": "replay:filter", "filter": "", "rate": "fast"},
        ],
    )
    def test_bad_forms_are_400(self, client: TestClient, form: dict[str, str]) -> None:
        response = client.post("/actions/preview", data={CSRF_FIELD: csrf_of(client), **form})
        assert response.status_code == 400
        assert "Traceback" not in response.text


class TestRefusals:
    """No action without a CSRF token, on GET, or for a read-only caller."""

    def test_csrf_token_required(self, client: TestClient, seeded: Seeded) -> None:
        seeded.add("dead", 2, dead="boom")
        csrf_of(client)
        form = {"do": "replay:filter", "filter": "", "confirmed": "yes"}
        assert client.post("/actions/run", data=form).status_code == 403
        wrong = {**form, CSRF_FIELD: "not-the-token"}
        response = client.post("/actions/run", data=wrong)
        assert response.status_code == 403 and "CSRF" in response.text
        assert set(seeded.statuses().values()) == {"dead_letter"}

    def test_actions_are_never_get(self, client: TestClient) -> None:
        assert client.get("/actions/run").status_code == 405
        assert client.get("/actions/preview").status_code == 405
        assert client.get("/circuits/close").status_code == 405

    def test_read_only_dashboard(self, sessions: Any, seeded: Seeded) -> None:
        seeded.add("dead", 2, dead="boom")
        with TestClient(create_app(seeded.sessions, read_only=True)) as viewer:
            page = viewer.get("/items").text
            assert "read-only" in page and "Replay selected" not in page
            token = csrf_of(viewer)
            form = {CSRF_FIELD: token, "do": "replay:filter", "filter": "", "confirmed": "yes"}
            assert viewer.post("/actions/preview", data=form).status_code == 403
            assert viewer.post("/actions/run", data=form).status_code == 403
            circuit = {CSRF_FIELD: token, "key": "billing"}
            assert viewer.post("/circuits/open", data=circuit).status_code == 403
        assert set(seeded.statuses().values()) == {"dead_letter"}


class TestCircuits:
    """Circuits are opened and closed by hand, audited in both trails."""

    def test_open_and_close(self, client: TestClient) -> None:
        token = csrf_of(client)
        opened = client.post("/circuits/open", data={CSRF_FIELD: token, "key": "billing"})
        assert opened.status_code == 200
        assert re.search(r'<td>billing</td><td><span class="pill state-open">', opened.text)
        closed = client.post("/circuits/close", data={CSRF_FIELD: token, "key": "billing"})
        assert 'class="pill state-closed"' in closed.text
        assert "manual" in closed.text  # the circuit audit trail
        audit = client.get("/audit").text
        assert "circuit_open" in audit and "circuit_close" in audit

    def test_bad_key_is_400(self, client: TestClient) -> None:
        token = csrf_of(client)
        response = client.post("/circuits/open", data={CSRF_FIELD: token, "key": " "})
        assert response.status_code == 400
        assert client.post("/circuits/smash", data={CSRF_FIELD: token}).status_code == 404
