"""The dashboard's pages over HTTP (Starlette's test client) on every backend."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text, update
from starlette.testclient import TestClient

from retryqueue import browsing, encryption, statements
from retryqueue.models import RetryItem, RetryStatus
from tests.web.conftest import Seeded

ROW_IDS = re.compile(r'<input type="checkbox" name="id" value="(\d+)"')


def listed(client: TestClient, url: str) -> list[int]:
    """The item ids one page of the item list shows, in order."""
    response = client.get(url)
    assert response.status_code == 200, response.text
    return [int(found) for found in ROW_IDS.findall(response.text)]


def pages(client: TestClient, url: str, direction: str = "next") -> list[list[int]]:
    """The ids of each page of a list, following its "next" (or "previous") page links."""
    seen: list[list[int]] = []
    while url:
        response = client.get(url)
        assert response.status_code == 200
        seen.append([int(found) for found in ROW_IDS.findall(response.text)])
        link = re.search(rf'<a href="([^"]+)" id="{direction}-page">', response.text)
        url = link.group(1).replace("&amp;", "&") if link else ""
    return seen


def walk(client: TestClient, url: str) -> list[int]:
    """Every id of a list, following its "next page" links."""
    return [item_id for page in pages(client, url) for item_id in page]


def last_page_url(client: TestClient, url: str) -> str:
    """The address of a list's last page (following "next page" links)."""
    while True:
        link = re.search(r'<a href="([^"]+)" id="next-page">', client.get(url).text)
        if link is None:
            return url
        url = link.group(1).replace("&amp;", "&")


class TestOverview:
    """The overview shows counts per status, backlog and outcomes, and a live fragment."""

    def test_counts_backlog_and_chart(self, client: TestClient, seeded: Seeded) -> None:
        seeded.add("dead", 3, dead="timeout after {n}s")
        seeded.add("waiting", 2)
        page = client.get("/")
        assert page.status_code == 200
        assert re.search(r'data-count="dead_letter">3<', page.text)
        assert re.search(r'data-count="pending">2<', page.text)
        assert "3 dead letter(s) need a decision" in page.text
        assert 'class="chart"' in page.text and "0 completed, 3 failed" in page.text
        live = client.get("/overview/live")
        assert live.status_code == 200 and "<html" not in live.text
        assert 'data-count="dead_letter">3<' in live.text

    def test_counts_stop_at_the_cap(self, sessions: object, seeded: Seeded) -> None:
        from retryqueue.web import create_app

        seeded.add("waiting", 4)
        with TestClient(create_app(seeded.sessions, count_cap=3)) as capped:
            assert 'data-count="pending">3+<' in capped.get("/").text


class TestItems:
    """The item list: filters, keyset pagination, sorting."""

    def test_filters(self, client: TestClient, seeded: Seeded) -> None:
        dead = seeded.add("dead", 2, dead="refused by 10.0.0.{n}", plugin_name="billing")
        tagged = seeded.add(
            "tagged", 2, plugin_name="mail", channel_name="c1", tags=["vip"], correlation_id="k-9"
        )
        other = seeded.add("other", 1, event_type="user.deleted")
        assert sorted(listed(client, "/items?status=dead_letter")) == dead
        assert sorted(listed(client, "/items?status=pending,dead_letter")) == dead + tagged + other
        assert sorted(listed(client, "/items?plugin=mail")) == tagged
        assert sorted(listed(client, "/items?channel=c1")) == tagged
        assert sorted(listed(client, "/items?correlation_id=k-9")) == tagged
        assert sorted(listed(client, "/items?tag=vip")) == tagged
        assert listed(client, "/items?tag=nope") == []
        assert listed(client, "/items?event_type=user.deleted") == other
        assert sorted(listed(client, "/items?error=REFUSED+BY")) == dead
        assert listed(client, "/items?error=100%25") == []
        assert sorted(listed(client, "/items?error_code=HTTP_ERROR")) == dead
        future = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
        assert listed(client, f"/items?created_after={future}") == []
        assert len(listed(client, f"/items?created_before={future}")) == 5

    def test_keyset_pages_cover_everything_once(self, client: TestClient, seeded: Seeded) -> None:
        made = seeded.add("many", 7)
        with seeded.sessions.begin() as session:  # equal sort values: the id breaks ties
            session.execute(update(RetryItem).values(priority=5))
        assert walk(client, "/items?limit=3") == sorted(made, reverse=True)
        assert walk(client, "/items?limit=2&sort=priority&order=asc") == sorted(made)
        assert walk(client, "/items?limit=3&sort=created_at") == sorted(made, reverse=True)

    @pytest.mark.parametrize(
        "url",
        [
            "/items?limit=3",
            "/items?limit=2&sort=priority&order=asc",
            "/items?limit=3&sort=created_at",
        ],
    )
    def test_previous_pages_retrace_the_next_ones(
        self, client: TestClient, seeded: Seeded, url: str
    ) -> None:
        seeded.add("many", 7)
        with seeded.sessions.begin() as session:  # equal sort values: the id breaks ties
            session.execute(update(RetryItem).values(priority=5))
        forwards = pages(client, url)
        assert len(forwards) >= 3
        backwards = pages(client, last_page_url(client, url), "previous")
        assert backwards == forwards[::-1]
        first = client.get(url).text
        assert 'id="previous-page"' not in first and 'id="first-page"' not in first

    def test_previous_page_of_a_filtered_list(self, client: TestClient, seeded: Seeded) -> None:
        dead = seeded.add("dead", 5, dead="boom", plugin_name="billing")
        seeded.add("other", 3, plugin_name="billing")
        url = "/items?status=dead_letter&plugin=billing&limit=2&order=asc"
        assert pages(client, last_page_url(client, url), "previous") == [
            [dead[4]],
            dead[2:4],
            dead[:2],
        ]

    def test_after_and_before_together_are_refused(self, client: TestClient) -> None:
        response = client.get("/items?after=5&before=9")
        assert response.status_code == 400 and "not both" in response.text

    def test_counts_matching(self, client: TestClient, seeded: Seeded) -> None:
        seeded.add("x", 3)
        assert "(3 matching)" in client.get("/items?limit=1").text

    @pytest.mark.parametrize(
        ("url", "problem"),
        [
            ("/items?status=nope", "unknown status"),
            ("/items?created_after=yesterday", "is not a date"),
            ("/items?created_before=2026-13-45", "is not a date"),
            ("/items?limit=100000", "page size"),
            ("/items?limit=-1", "page size"),
            ("/items?sort=error_message", "unknown sort"),
            ("/items?order=sideways", "asc or desc"),
            ("/items?after=x%7Cy", "not an item id"),
            ("/items?sort=priority&after=x%7C3", "not a cursor"),
            ("/items/abc", "not an item id"),
            ("/items/-4", "not an item id"),
            ("/audit?before=1e9", "not an item id"),
            ("/items?plugin=" + "p" * 300, "at most 255"),
        ],
    )
    def test_bad_input_gives_a_clear_400(self, client: TestClient, url: str, problem: str) -> None:
        response = client.get(url)
        assert response.status_code == 400
        assert problem in response.text
        assert "Traceback" not in response.text

    def test_unknown_item_is_404(self, client: TestClient) -> None:
        response = client.get("/items/987654")
        assert response.status_code == 404 and "987654" in response.text


@pytest.fixture
def key() -> Iterator[str]:
    """A fresh encryption key, switched off again after the test."""
    made = encryption.generate_key()
    yield made
    encryption.configure(None)


class TestItemPage:
    """One item: every column, the payload, the attempt timeline with forensics."""

    def test_columns_payload_and_timeline(self, client: TestClient, seeded: Seeded) -> None:
        (item_id,) = seeded.add("one", 1, dead="refused by {n}", correlation_id="corr-7")
        page = client.get(f"/items/{item_id}").text
        for column in ("event_id", "lease_token", "expires_at", "error_fingerprint", "tags"):
            assert f"<th>{column}</th>" in page
        assert "corr-7" in page
        assert "&#34;name&#34;: &#34;one&#34;" in page  # pretty-printed JSON, escaped
        assert 'class="pill outcome-dead_lettered"' in page
        assert "builtins.ConnectionError" in page and "Traceback (most recent call last)" in page

    def test_payload_decrypted_with_a_key_marked_without(
        self, client: TestClient, seeded: Seeded, key: str
    ) -> None:
        encryption.configure([key])
        (item_id,) = seeded.add("secret-payload", 1, dead="declined for {n}")
        assert "secret-payload" in client.get(f"/items/{item_id}").text
        encryption.configure(None)
        page = client.get(f"/items/{item_id}").text
        assert "secret-payload" not in page
        assert 'class="pill warn">encrypted<' in page
        assert "(encrypted: no key configured)" in client.get("/items").text


class TestDeadLetters:
    """Dead letters grouped by error code and normalised message."""

    def test_groups_and_their_items(self, client: TestClient, seeded: Seeded) -> None:
        timeouts = seeded.add("t", 3, dead="timeout after {n}s to 10.1.2.{n}", plugin_name="a")
        timeouts += seeded.add("t2", 1, dead="timeout after {n}s to 10.9.9.9", plugin_name="b")
        refused = seeded.add("r", 2, dead="refused", code="CONN")
        page = client.get("/dead-letters").text
        groups = re.findall(r'<tr class="group">.*?</tr>', page, re.S)
        assert len(groups) == 2
        assert '<td class="num">4</td>' in groups[0] and "a, b" in groups[0]
        assert '<td class="num">2</td>' in groups[1] and "CONN" in groups[1]
        links = re.findall(r'href="([^"]*/items\?[^"]+)">items</a>', page)
        assert sorted(listed(client, links[0].replace("&amp;", "&"))) == sorted(timeouts)
        assert sorted(listed(client, links[1].replace("&amp;", "&"))) == refused

    def test_group_figures_and_sample(self, seeded: Seeded) -> None:
        made = seeded.add("t", 3, dead="timeout after {n}s", plugin_name="a")
        with seeded.sessions() as session:
            [group] = browsing.error_groups(session)
            seen = session.scalars(
                select(RetryItem.last_attempted_at).where(RetryItem.id.in_(made))
            ).all()
        assert (group.count, group.plugins, group.error_code) == (3, ("a",), "HTTP_ERROR")
        assert group.sample_error == f"timeout after {max(made) % 250 + 1}s"  # the newest's
        assert (group.first_seen, group.last_seen) == (min(seen), max(seen))

    @pytest.mark.parametrize("backend", ["postgresql"])
    def test_groups_read_only_their_index_on_postgresql(self, backend: str, seeded: Seeded) -> None:
        seeded.add("t", 2, dead="boom")
        engine = seeded.sessions.kw["bind"]
        with engine.connect() as connection:  # the visibility map set: as in a lived-in table
            solo = connection.execution_options(isolation_level="AUTOCOMMIT")
            solo.exec_driver_sql("VACUUM (ANALYZE) daz_retry_queue")
        with seeded.sessions() as session:
            # Two rows: left to itself the planner would read the table. Can it read the
            # dead letters from their index alone?
            session.execute(text("SET LOCAL enable_seqscan = off"))
            session.execute(text("SET LOCAL enable_bitmapscan = off"))
            tally = statements.error_tally([RetryStatus.DEAD_LETTER])
            compiled = tally.compile(session.get_bind())
            explained = session.connection().exec_driver_sql(f"EXPLAIN {compiled}", compiled.params)
            plan = [line for (line,) in explained]
        assert any("Index Only Scan using idx_retry_queue_dead_letter_groups" in x for x in plan)


class TestOtherPages:
    """Circuits, throughput and audit render."""

    def test_render(self, client: TestClient, seeded: Seeded) -> None:
        seeded.add("dead", 2, dead="boom", plugin_name="billing")
        circuits = client.get("/circuits").text
        assert "no circuit has tripped yet" in circuits
        assert "no key is paused or rate-limited" in circuits
        throughput = client.get("/throughput").text
        assert "billing" in throughput and '<td class="num">2</td>' in throughput
        assert "nothing yet" in client.get("/audit").text
        assert client.get("/static/dashboard.css").status_code == 200
        assert client.get("/static/dashboard.js").status_code == 200

    def test_circuits_page_lists_pauses_and_limits(
        self, client: TestClient, seeded: Seeded
    ) -> None:
        """A key held back by a pause or a rate limit is on the circuits page, where an
        operator looks for what stops a key; the pause's reason (the handler's or an
        operator's text) is shown escaped."""
        with seeded.sessions.begin() as session:
            seeded.queue.pause_key(session, "mail", seconds=600, reason="<b>429</b> & co")
            seeded.queue.set_limit(session, "billing:invoice.sent", 2.5, burst=4)
        page = client.get("/circuits").text
        chunks = [chunk.split("</tr>")[0] for chunk in page.split('<tr class="key-limit">')[1:]]
        rows = {row.split("<td>")[1].split("</td>")[0]: row for row in chunks}
        assert set(rows) == {"billing:invoice.sent", "mail"}
        assert "&lt;b&gt;429&lt;/b&gt; &amp; co" in rows["mail"] and "<b>429" not in page
        limited = rows["billing:invoice.sent"]
        assert '<td class="num">2.5</td>' in limited and '<td class="num">4</td>' in limited
        assert '<td class="num">4.0</td>' in limited  # a new bucket is full
        assert "no key is paused or rate-limited" not in page
