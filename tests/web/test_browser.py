"""End to end in a real headless Chromium (Debian's), driven by Playwright.

The dashboard runs as ``retryqueue dashboard`` on a free port; the tests click through it
like an operator and check the database afterwards. Screenshots land in the test's
temporary directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from retryqueue.models import metadata
from tests.web.browser import CHROMIUM, serve_dashboard
from tests.web.conftest import Seeded

if not CHROMIUM.exists():
    pytest.skip(
        "Debian's chromium is not installed (apt-get install chromium; .ci/run does it)",
        allow_module_level=True,
    )

from playwright.sync_api import Browser, Page, expect, sync_playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium from /usr/bin/chromium."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def seeded_db(tmp_path: Path) -> Iterator[tuple[str, Seeded]]:
    """A SQLite file database with dead letters in two error groups and pending items."""
    url = f"sqlite:///{tmp_path}/queue.db"
    engine = create_engine(url)
    metadata.create_all(engine)
    seeded = Seeded(sessionmaker(engine, expire_on_commit=False))
    seeded.add("timeouts", 3, dead="timeout after {n}s to 10.0.0.{n}", plugin_name="billing")
    seeded.add("refused", 2, dead="refused by 'shop-{n}'", code="CONN", plugin_name="mail")
    seeded.add("waiting", 4, plugin_name="billing", event_type="invoice.sent")
    yield url, seeded
    engine.dispose()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser page."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    opened = context.new_page()
    yield opened
    context.close()


def shoot(page: Page, tmp_path: Path, name: str) -> None:
    """Save a full-page screenshot and check it is a real PNG."""
    target = tmp_path / f"{name}.png"
    page.screenshot(path=str(target), full_page=True)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class TestOperatorJourney:
    """Overview, filtering, an item's timeline, replaying a dead-letter group."""

    def test_journey(self, page: Page, seeded_db: tuple[str, Seeded], tmp_path: Path) -> None:
        url, seeded = seeded_db
        with serve_dashboard(url) as base:
            page.goto(f"{base}/")
            expect(page.locator('[data-count="dead_letter"]')).to_have_text("5")
            expect(page.locator('[data-count="pending"]')).to_have_text("4")
            shoot(page, tmp_path, "overview")

            # The overview refreshes itself without a reload.
            page.evaluate("window.__stayed = true")
            seeded.add("late", 1, dead="late failure", code="LATE")
            expect(page.locator('[data-count="dead_letter"]')).to_have_text("6", timeout=20_000)
            assert page.evaluate("window.__stayed") is True

            page.click("nav >> text=Items")
            page.fill('input[name="plugin"]', "billing")
            page.select_option('select[name="status"]', ["dead_letter"])
            page.click("#apply-filters")
            rows = page.locator("tr.row")
            expect(rows).to_have_count(3)
            assert "plugin=billing" in page.url
            shoot(page, tmp_path, "items")

            first = rows.first.locator("td >> nth=1 >> a")
            item_id = first.inner_text()
            first.click()
            expect(page.locator("h1")).to_contain_text(f"Item {item_id}")
            expect(page.locator("tr.attempt")).to_have_count(1)
            expect(page.locator("tr.attempt")).to_contain_text("dead_lettered")
            expect(page.locator("tr.attempt")).to_contain_text("timeout after")
            shoot(page, tmp_path, "item")

            page.click("nav >> text=Dead letters")
            groups = page.locator("tr.group")
            expect(groups).to_have_count(3)
            timeouts = groups.filter(has_text="timeout after")
            expect(timeouts.locator("td.num")).to_have_text("3")
            timeouts.locator("button.replay-group").click()
            expect(page.locator("#preview-count")).to_have_text("3")
            shoot(page, tmp_path, "preview")
            page.fill('input[name="rate"]', "100")
            page.click("#confirm")
            expect(page.locator("tr.audit-entry").first).to_contain_text("replay")
            expect(page.locator("tr.audit-entry .affected").first).to_have_text("3", timeout=20_000)
            shoot(page, tmp_path, "audit")

        statuses = seeded.statuses()
        assert [statuses[i] for i in seeded.ids["timeouts"]] == ["pending"] * 3
        assert [statuses[i] for i in seeded.ids["refused"]] == ["dead_letter"] * 2

    def test_select_all_and_replay_selection(
        self, page: Page, seeded_db: tuple[str, Seeded], tmp_path: Path
    ) -> None:
        url, seeded = seeded_db
        with serve_dashboard(url) as base:
            page.goto(f"{base}/items?plugin=mail")
            page.check("input.select-all")
            expect(page.locator("input.select:checked")).to_have_count(2)
            page.click('button[value="replay:selection"]')
            expect(page.locator("#preview-count")).to_have_text("2")
            page.click("#confirm")
            expect(page.locator("tr.audit-entry .affected").first).to_have_text("2", timeout=20_000)
        statuses = seeded.statuses()
        assert [statuses[i] for i in seeded.ids["refused"]] == ["pending"] * 2


class TestReadOnly:
    """A read-only dashboard shows no action buttons."""

    def test_no_buttons(self, page: Page, seeded_db: tuple[str, Seeded]) -> None:
        url, _seeded = seeded_db
        with serve_dashboard(url, extra=("--read-only",)) as base:
            page.goto(f"{base}/dead-letters")
            expect(page.locator("tr.group")).to_have_count(2)
            expect(page.locator("button.replay-group")).to_have_count(0)
            expect(page.locator("header")).to_contain_text("read-only")


class TestPausesOnTheCircuitsPage:
    """What holds a key back, in one place: a pause and a rate limit beside the circuits."""

    def test_pause_and_limit_shown(
        self, page: Page, seeded_db: tuple[str, Seeded], tmp_path: Path
    ) -> None:
        url, seeded = seeded_db
        with seeded.sessions.begin() as session:
            seeded.queue.pause_key(session, "billing", seconds=900, reason="429 <Retry-After>")
            seeded.queue.set_limit(session, "mail", 20, burst=40)
        with serve_dashboard(url, extra=("--read-only",)) as base:
            page.goto(f"{base}/")
            page.click("nav >> text=Circuits")
            rows = page.locator("tr.key-limit")
            expect(rows).to_have_count(2)
            expect(rows.filter(has_text="billing")).to_contain_text("429 <Retry-After>")
            expect(rows.filter(has_text="billing").locator(".pill")).to_have_count(1)
            expect(rows.filter(has_text="mail").locator("td.num")).to_have_text(
                ["20", "40", "40.0", "0"]
            )
            shoot(page, tmp_path, "circuits")


def shown_ids(page: Page) -> list[str]:
    """The item ids the list shows, in order."""
    return page.locator("input.select").evaluate_all("boxes => boxes.map(box => box.value)")


class TestPaging:
    """The item list's next and previous page links walk it both ways."""

    def test_next_then_previous(self, page: Page, seeded_db: tuple[str, Seeded]) -> None:
        url, _seeded = seeded_db
        with serve_dashboard(url, extra=("--read-only",)) as base:
            page.goto(f"{base}/items?limit=4")
            expect(page.locator("#previous-page")).to_have_count(0)
            first = shown_ids(page)
            page.click("#next-page")
            expect(page.locator("tr.row")).to_have_count(4)
            second = shown_ids(page)
            page.click("#next-page")
            expect(page.locator("tr.row")).to_have_count(1)
            expect(page.locator("#next-page")).to_have_count(0)
            page.click("#previous-page")
            expect(page.locator("tr.row")).to_have_count(4)
            assert shown_ids(page) == second
            page.click("#previous-page")
            expect(page.locator("#previous-page")).to_have_count(0)
            assert shown_ids(page) == first
            assert not set(first) & set(second)
