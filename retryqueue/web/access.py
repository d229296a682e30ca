"""Who may use the dashboard, and how: credentials, the access resolver, CSRF tokens.

One resolver decides every request: without credentials configured every caller is the
local operator (the CLI only allows that on a loopback address); with credentials, a
request needs HTTP basic auth or a bearer token matching one of them, and a read-only
credential (or a read-only dashboard) may look but never act. Secrets are compared in
constant time and never shown or logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    SimpleUser,
)
from starlette.requests import HTTPConnection, Request

from retryqueue.errors import InvalidArgument

__all__ = [
    "ACT",
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "ENV_PASSWORD",
    "ENV_READONLY_PASSWORD",
    "ENV_READONLY_TOKEN",
    "ENV_READONLY_USER",
    "ENV_TOKEN",
    "ENV_USER",
    "READ",
    "Credential",
    "Credentials",
    "DashboardAuth",
    "csrf_matches",
    "new_csrf_token",
]

READ = "read"
"""Scope of every authenticated caller: see every page."""
ACT = "act"
"""Scope of a caller who may act (replay, purge, open and close circuits)."""

ENV_USER = "RETRYQUEUE_DASHBOARD_USER"
ENV_PASSWORD = "RETRYQUEUE_DASHBOARD_PASSWORD"
ENV_READONLY_USER = "RETRYQUEUE_DASHBOARD_READONLY_USER"
ENV_READONLY_PASSWORD = "RETRYQUEUE_DASHBOARD_READONLY_PASSWORD"
ENV_TOKEN = "RETRYQUEUE_DASHBOARD_TOKEN"
ENV_READONLY_TOKEN = "RETRYQUEUE_DASHBOARD_READONLY_TOKEN"

CSRF_COOKIE = "retryqueue_csrf"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True, slots=True)
class Credential:
    """A user and password (``basic``) or a named bearer token; the secret never prints."""

    name: str
    secret: str = field(repr=False)
    scheme: Literal["basic", "bearer"] = "basic"
    read_only: bool = False

    def __post_init__(self) -> None:
        if not self.name or (":" in self.name and self.scheme == "basic"):
            raise InvalidArgument("credential", "a user name is required (without ':')")
        if len(self.secret) < 8:
            raise InvalidArgument(
                "credential", f"the secret of {self.name!r} must be at least 8 characters"
            )


@dataclass(frozen=True, slots=True)
class Credentials:
    """The credentials the dashboard accepts (at least one)."""

    accepted: Sequence[Credential]

    def __post_init__(self) -> None:
        if not self.accepted:
            raise InvalidArgument("credentials", "give at least one credential")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials | None:
        """Credentials from the ``RETRYQUEUE_DASHBOARD_*`` variables; None when none is set.

        USER/PASSWORD and READONLY_USER/READONLY_PASSWORD give basic-auth users; TOKEN and
        READONLY_TOKEN bearer tokens.
        """
        env = os.environ if environ is None else environ
        found: list[Credential] = []
        for user_var, password_var, read_only in (
            (ENV_USER, ENV_PASSWORD, False),
            (ENV_READONLY_USER, ENV_READONLY_PASSWORD, True),
        ):
            user, password = env.get(user_var), env.get(password_var)
            if bool(user) != bool(password):
                raise InvalidArgument(user_var, f"set both {user_var} and {password_var}")
            if user and password:
                found.append(Credential(user, password, "basic", read_only))
        for token_var, name, read_only in (
            (ENV_TOKEN, "token", False),
            (ENV_READONLY_TOKEN, "read-only token", True),
        ):
            token = env.get(token_var)
            if token:
                found.append(Credential(name, token, "bearer", read_only))
        return cls(tuple(found)) if found else None

    def match(self, authorization: str) -> Credential | None:
        """The credential an ``Authorization`` header presents, if it is one of ours."""
        scheme, _, value = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            name, _, secret = decoded.partition(":")
        elif scheme == "bearer":
            name, secret = "", value.strip()
        else:
            return None
        found = None
        for credential in self.accepted:
            if credential.scheme != scheme:
                continue
            same_name = scheme == "bearer" or hmac.compare_digest(
                credential.name.encode(), name.encode()
            )
            same_secret = hmac.compare_digest(credential.secret.encode(), secret.encode())
            if same_name and same_secret:
                found = credential
        return found


class DashboardAuth(AuthenticationBackend):
    """Starlette authentication backend: the dashboard's one access resolver."""

    def __init__(self, credentials: Credentials | None, *, read_only: bool) -> None:
        self.credentials = credentials
        self.read_only = read_only

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        """Resolve a request to (scopes, user); unknown credentials raise (answered 401)."""
        if self.credentials is None:
            host = conn.client.host if conn.client else "local"
            return self._grant("local", read_only=False, where=host)
        header = conn.headers.get("authorization")
        if not header:
            raise AuthenticationError("credentials required")
        credential = self.credentials.match(header)
        if credential is None:
            raise AuthenticationError("unknown credentials")
        return self._grant(credential.name, read_only=credential.read_only)

    def _grant(
        self, name: str, *, read_only: bool, where: str | None = None
    ) -> tuple[AuthCredentials, SimpleUser]:
        scopes = [READ] if read_only or self.read_only else [READ, ACT]
        actor = name if where is None else f"{name}@{where}"
        return AuthCredentials(scopes), SimpleUser(actor)


def new_csrf_token() -> str:
    """A fresh random CSRF token (double-submit: a cookie and a hidden form field)."""
    return secrets.token_urlsafe(32)


def csrf_matches(request: Request, submitted: object) -> bool:
    """Whether a form's token equals the request's CSRF cookie."""
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie or not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(cookie.encode(), submitted.encode())
