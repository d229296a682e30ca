"""The operators' dashboard: an ASGI app (Starlette + Jinja2) over the queue's insight.

Install the ``web`` extra (``pip install "retryqueue[web]"``), then either run
``retryqueue dashboard`` or mount :func:`create_app` in your own Starlette/FastAPI app.
Every asset is served from the package: it works offline.
"""

from __future__ import annotations

from retryqueue.web.access import Credential, Credentials
from retryqueue.web.app import create_app

__all__ = ["Credential", "Credentials", "create_app"]
