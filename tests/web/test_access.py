"""Who may see and act: credentials, read-only credentials, and the CLI's refusal."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from starlette.testclient import TestClient

from retryqueue.cli.dashboard import is_loopback
from retryqueue.errors import InvalidArgument
from retryqueue.web import Credential, Credentials, create_app
from tests.cli.conftest import invoke_cli
from tests.web.conftest import CSRF_FIELD, Seeded

PASSWORD = "s3cret-password"


def basic(user: str, password: str) -> dict[str, str]:
    """An Authorization header for HTTP basic auth."""
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


@pytest.fixture
def credentials() -> Credentials:
    """A full user, a read-only user and a bearer token."""
    return Credentials(
        (
            Credential("ops", PASSWORD),
            Credential("viewer", "viewer-password", read_only=True),
            Credential("token", "t0ken-value-123", scheme="bearer"),
        )
    )


class TestCredentials:
    """With credentials configured, every request must present one."""

    def test_required(self, sessions: Any, credentials: Credentials) -> None:
        with TestClient(create_app(sessions, credentials=credentials)) as client:
            response = client.get("/")
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Basic")
            assert client.get("/", headers=basic("ops", "wrong-password")).status_code == 401
            assert client.get("/", headers=basic("nobody", PASSWORD)).status_code == 401
            assert client.get("/", headers={"Authorization": "Basic !!"}).status_code == 401
            page = client.get("/", headers=basic("ops", PASSWORD))
            assert page.status_code == 200 and PASSWORD not in page.text
            bearer = {"Authorization": "Bearer t0ken-value-123"}
            assert client.get("/items", headers=bearer).status_code == 200

    def test_read_only_credential_cannot_act(
        self, sessions: Any, seeded: Seeded, credentials: Credentials
    ) -> None:
        seeded.add("dead", 1, dead="boom")
        with TestClient(create_app(sessions, credentials=credentials)) as client:
            viewer = basic("viewer", "viewer-password")
            assert "read-only" in client.get("/items", headers=viewer).text
            token = client.cookies.get("retryqueue_csrf")
            form = {CSRF_FIELD: token or "", "do": "replay:filter", "filter": ""}
            assert client.post("/actions/preview", data=form, headers=viewer).status_code == 403
            ops = basic("ops", PASSWORD)
            assert client.post("/actions/preview", data=form, headers=ops).status_code == 200

    def test_from_env(self) -> None:
        env = {
            "RETRYQUEUE_DASHBOARD_USER": "ops",
            "RETRYQUEUE_DASHBOARD_PASSWORD": PASSWORD,
            "RETRYQUEUE_DASHBOARD_READONLY_TOKEN": "read-only-token-1",
        }
        found = Credentials.from_env(env)
        assert found is not None
        assert [(c.name, c.scheme, c.read_only) for c in found.accepted] == [
            ("ops", "basic", False),
            ("read-only token", "bearer", True),
        ]
        assert PASSWORD not in repr(found)
        assert Credentials.from_env({}) is None
        with pytest.raises(InvalidArgument, match="set both"):
            Credentials.from_env({"RETRYQUEUE_DASHBOARD_USER": "ops"})
        with pytest.raises(InvalidArgument, match="at least 8"):
            Credential("ops", "short")


class TestCommand:
    """``retryqueue dashboard`` binds loopback freely, anything else only with credentials."""

    def test_refuses_a_public_bind_without_credentials(
        self, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        for name in ("USER", "PASSWORD", "TOKEN", "READONLY_USER", "READONLY_TOKEN"):
            monkeypatch.delenv(f"RETRYQUEUE_DASHBOARD_{name}", raising=False)
        result = invoke_cli(f"sqlite:///{tmp_path}/q.db", "dashboard", "--host", "0.0.0.0")
        assert result.exit_code == 1
        assert "refusing to serve on 0.0.0.0 without credentials" in result.output

    def test_loopback(self) -> None:
        assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
        assert is_loopback("127.3.0.1")
        assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")
        assert not is_loopback("example.org")
