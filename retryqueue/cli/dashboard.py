"""``retryqueue dashboard``: serve the web dashboard with uvicorn.

It binds 127.0.0.1 by default. Binding any other address needs credentials from the
environment (``RETRYQUEUE_DASHBOARD_USER``/``_PASSWORD``, or ``RETRYQUEUE_DASHBOARD_TOKEN``;
read-only ones with ``_READONLY_``): without them it refuses to start.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

import typer

from retryqueue.cli._context import CliError, state

__all__ = ["dashboard", "is_loopback", "register"]


def register(app: typer.Typer) -> None:
    """Add the ``dashboard`` command to the root app."""
    app.command("dashboard")(dashboard)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def dashboard(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to bind.", show_default=True)] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="Port to listen on.", show_default=True)
    ] = 8089,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Show everything, refuse every action.")
    ] = False,
) -> None:
    """Serve the web dashboard (needs the web extra: pip install "retryqueue[web]")."""
    try:
        import uvicorn

        from retryqueue.web import Credentials, create_app
    except ImportError as exc:
        raise CliError(
            f'the dashboard needs the web extra: pip install "retryqueue[web]" ({exc.name})'
        ) from None
    credentials = Credentials.from_env()
    if credentials is None and not is_loopback(host):
        raise CliError(
            f"refusing to serve on {host} without credentials: set RETRYQUEUE_DASHBOARD_USER "
            "and RETRYQUEUE_DASHBOARD_PASSWORD, or RETRYQUEUE_DASHBOARD_TOKEN (or bind 127.0.0.1)"
        )
    current = state(ctx)
    app = create_app(
        current.engine(),
        read_only=read_only,
        credentials=credentials,
        queue=current.queue(),
        roll_up_every=60.0,  # the charts' closed hours, off the request path
    )
    protection = "no authentication (local only)" if credentials is None else "credentials"
    mode = "read-only" if read_only else "full access"
    typer.echo(f"retryqueue dashboard on http://{host}:{port}/ ({mode}, {protection})", err=True)
    options: dict[str, Any] = {"host": host, "port": port, "log_level": "info"}
    uvicorn.run(app, **options)
