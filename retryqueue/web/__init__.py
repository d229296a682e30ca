"""The operators' dashboard: an ASGI app (Starlette + Jinja2) over the queue's insight.

Install the ``web`` extra (``pip install "retryqueue[web]"``), then either run
``retryqueue dashboard`` or mount :func:`create_app` in your own Starlette/FastAPI app.
Every asset is served from the package: it works offline.
"""

from __future__ import annotations

from retryqueue.web.access import Credential, Credentials
from retryqueue.web.app import create_app
from retryqueue.web.rollup import RollUpLoop, keep_rolled_up

__all__ = ["Credential", "Credentials", "RollUpLoop", "create_app", "keep_rolled_up"]
