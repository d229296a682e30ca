"""Take the screenshots of docs/dashboard.md: seed a demo queue, serve the dashboard, shoot.

Run from the repository root with the test extra installed and Debian's chromium:

    python docs/dashboard/screenshots.py

It writes docs/dashboard/*.png. Nothing leaves the machine: the dashboard listens on a free
loopback port and Chromium is the system's (/usr/bin/chromium).
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from retryqueue import ManualClock, RetryQueue
from retryqueue.circuits import CircuitBreaker
from retryqueue.models import metadata
from retryqueue.registry import register_worker
from retryqueue.web import create_app

HERE = Path(__file__).parent
ERRORS = [
    ("HTTP_503", "upstream 10.0.3.{n}:8443 answered 503 after {n}ms"),
    ("TIMEOUT", "timeout after 30s waiting for order {n}"),
    ("ValidationError", "field 'amount' of invoice {n} is negative"),
]


def seed(sessions: sessionmaker) -> None:  # type: ignore[type-arg]
    """A day of traffic: completions and failures every hour, a few dozen dead letters."""
    rng = random.Random(7)
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
    clock = ManualClock(start)
    queue = RetryQueue(clock=clock)
    plugins = ["billing", "mail", "crm"]
    for hour in range(24):
        clock.set(start + timedelta(hours=hour, minutes=5))
        with sessions.begin() as session:
            for n in range(rng.randint(8, 30)):
                plugin = rng.choice(plugins)
                queue.enqueue(
                    session,
                    f"{plugin}.{rng.choice(['sync', 'notify'])}",
                    {"order": 1000 + hour * 50 + n, "amount": rng.randint(1, 900)},
                    plugin_name=plugin,
                    channel_name=rng.choice(["web", "api"]),
                    max_retries=0 if rng.random() < 0.12 else 3,
                    tags=["vip"] if n % 7 == 0 else None,
                    correlation_id=f"req-{hour}-{n}",
                )
        clock.advance(60)
        with sessions.begin() as session:
            for claim in queue.acquire(session, f"worker-{hour % 3}", batch_size=100):
                if rng.random() < 0.8:
                    queue.complete(session, claim, duration_ms=rng.randint(5, 400))
                else:
                    code, message = rng.choice(ERRORS)
                    queue.fail(
                        session,
                        claim,
                        error_message=message.format(n=rng.randint(1, 999)),
                        error_code=code,
                        duration_ms=rng.randint(50, 3000),
                        exception_type="httpx.HTTPStatusError",
                        error_traceback='Traceback (most recent call last):\n  File "app/'
                        f'handlers.py", line 42, in handle\n    raise {code}\n',
                    )
    clock.set(datetime.now(UTC))
    with sessions.begin() as session:
        CircuitBreaker(clock=clock).open(session, "crm", cooldown=600, actor="ops")
        queue.pause_key(session, "billing", seconds=900, reason="429 Retry-After: 900")
        queue.set_limit(session, "mail", 20, burst=40)
        for n, kind in enumerate(("threaded", "threaded", "asyncio")):
            register_worker(
                session, f"worker-{n}", kind=kind, concurrency=4 * (n + 1), batch_size=20,
                at=clock.now(),
            )  # fmt: skip


def main() -> None:
    """Seed, serve, shoot."""
    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{scratch}/demo.db")
        metadata.create_all(engine)
        sessions = sessionmaker(engine, expire_on_commit=False)
        seed(sessions)
        server = uvicorn.Server(
            uvicorn.Config(create_app(sessions), host="127.0.0.1", port=0, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not (server.started and server.servers):
            if time.monotonic() > deadline:
                raise SystemExit("the dashboard did not start")
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium", args=["--no-sandbox"]
                )
                page = browser.new_page(viewport={"width": 1360, "height": 860})
                page.goto(f"{base}/")
                page.screenshot(path=str(HERE / "overview.png"), full_page=True)
                page.goto(f"{base}/items?status=dead_letter&status=pending&limit=15")
                page.screenshot(path=str(HERE / "items.png"))
                item = page.locator("tr.row").first.locator("td >> nth=1 >> a")
                item.click()
                page.screenshot(path=str(HERE / "item.png"), full_page=True)
                page.goto(f"{base}/dead-letters")
                page.screenshot(path=str(HERE / "dead-letters.png"), full_page=True)
                page.locator("button.replay-group").first.click()
                page.screenshot(path=str(HERE / "preview.png"), full_page=True)
                page.click("#confirm")
                page.wait_for_selector("tr.audit-entry")
                page.goto(f"{base}/circuits")
                page.screenshot(path=str(HERE / "circuits.png"), full_page=True)
                page.goto(f"{base}/workers")
                page.screenshot(path=str(HERE / "workers.png"))
                browser.close()
        finally:
            server.should_exit = True
            thread.join(timeout=10)
            engine.dispose()
    print(f"screenshots written to {HERE}")


if __name__ == "__main__":
    main()
