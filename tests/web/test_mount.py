"""The dashboard mounted under a prefix of a FastAPI application."""

from __future__ import annotations

import re

from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker
from starlette.testclient import TestClient

from retryqueue import encryption
from retryqueue.web import create_app
from retryqueue.web.access import CSRF_COOKIE
from tests.web.conftest import CSRF_FIELD, Seeded


class TestMounted:
    """Links, assets, the CSRF cookie and actions all follow the prefix."""

    def test_under_a_prefix(self, sessions: sessionmaker[Session], seeded: Seeded) -> None:
        dead = seeded.add("dead", 2, dead="boom")
        host = FastAPI()
        host.mount("/ops/queue", create_app(sessions))

        @host.get("/health")
        def health() -> dict[str, str]:
            return {"status": "ok"}

        with TestClient(host) as client:
            assert client.get("/health").json() == {"status": "ok"}
            page = client.get("/ops/queue/items")
            assert page.status_code == 200
            assert 'href="http://testserver/ops/queue/static/dashboard.css"' in page.text
            assert f'href="http://testserver/ops/queue/items/{dead[0]}"' in page.text
            assert "Path=/ops/queue;" in page.headers["set-cookie"]
            assert client.get("/ops/queue/static/dashboard.js").status_code == 200
            token = client.cookies.get(CSRF_COOKIE)
            form = {
                CSRF_FIELD: token,
                "do": "replay:filter",
                "filter": "status=dead_letter",
                "confirmed": "yes",
            }
            done = client.post("/ops/queue/actions/run", data=form, follow_redirects=True)
            assert done.status_code == 200 and "/ops/queue/audit" in str(done.url)
            assert re.findall(r'class="num affected">(\d+)<', done.text) == ["2"]
        assert set(seeded.statuses().values()) == {"pending"}


class TestEncryptedForensics:
    """With a key, a failed attempt's traceback is stored sealed and shown opened."""

    def test_traceback_sealed(self, client: TestClient, seeded: Seeded) -> None:
        encryption.configure([encryption.generate_key()])
        try:
            (item_id,) = seeded.add("secret", 1, dead="declined")
            with seeded.sessions() as session:
                raw = session.execute(
                    text("SELECT error_traceback FROM daz_retry_history WHERE retry_queue_id = :i"),
                    {"i": item_id},
                ).scalar_one()
            assert "Traceback" not in raw
            assert "Traceback (most recent call last)" in client.get(f"/items/{item_id}").text
        finally:
            encryption.configure(None)
