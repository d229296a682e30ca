"""Every path that records a failure stores its fingerprint, on the item and the history row.

The stored fingerprint is always ``fingerprint(stored code, stored message)``: a refused
retry (deadline, expiry) is grouped by what it is recorded as, not by the handler's error.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from retryqueue import InvalidArgument, ItemFilter, ManualClock, RetryStatus
from retryqueue.fingerprint import fingerprint
from retryqueue.policy import DEADLINE_REACHED, EXPIRED
from tests.support.poison import add_undecryptable_item


def _assert_grouped(sessions: Any, queue: Any, item_id: int, statuses: int) -> str:
    """The item's and its failure history rows' fingerprints match their code and message."""
    with sessions() as session:
        item = queue.get(session, item_id)
        history = queue.history(session, item_id)
    assert item.error_fingerprint is not None
    assert item.error_fingerprint == fingerprint(item.last_error_code, item.error_message)
    failures = [entry for entry in history if entry.status != "completed"]
    assert len(failures) == statuses
    for entry in failures:
        assert entry.error_fingerprint == fingerprint(entry.error_code, entry.error_message)
    assert failures[-1].error_fingerprint == item.error_fingerprint
    return item.error_fingerprint


class TestEveryFailureIsFingerprinted:
    """fail (retry, dead letter, failed), deadline, expiry, stale lock, quarantine, force."""

    def test_fail_retry_dead_letter_and_failed(self, sessions: Any, queue: Any) -> None:
        with sessions.begin() as session:
            retried = queue.enqueue(session, "e", {}, max_retries=1, retry_delay_seconds=0).id
            failed = queue.enqueue(session, "e", {}).id
        for attempt in (1, 2):
            with sessions.begin() as session:
                (claimed,) = queue.acquire(session, "w", batch_size=1)
                queue.fail(
                    session,
                    claimed,
                    error_message=f"timed out after {attempt * 10}.5s (request {attempt:04x}ab)",
                    error_code="TIMEOUT",
                )
        with sessions.begin() as session:
            (claimed,) = queue.acquire(session, "w", batch_size=1)
            assert claimed.id == failed
            queue.fail(session, claimed, "w", "no route 'x'", "NO_HANDLER", retryable=False)
        with sessions() as session:
            assert queue.get(session, retried).status is RetryStatus.DEAD_LETTER
        group = _assert_grouped(sessions, queue, retried, statuses=2)
        assert group == fingerprint("TIMEOUT", "timed out after 3s (request 0009ab)")
        _assert_grouped(sessions, queue, failed, statuses=1)

    def test_forced_fail(self, sessions: Any, queue: Any) -> None:
        with sessions.begin() as session:
            item_id = queue.enqueue(session, "e", {}).id
        with sessions.begin() as session:  # the operator's path (retryqueue fail ID)
            assert queue.fail(session, item_id, "cli:ops", "gave up by hand", force=True)
        _assert_grouped(sessions, queue, item_id, statuses=1)

    def test_deadline_and_retry_past_expiry(
        self, sessions: Any, queue: Any, clock: ManualClock
    ) -> None:
        with sessions.begin() as session:
            budget = queue.enqueue(session, "e", {}, max_retries=9, retry_for=10).id
            short = queue.enqueue(session, "e", {}, max_retries=9, ttl=30).id
        with sessions.begin() as session:
            claimed = queue.acquire(session, "w", batch_size=2)
        clock.advance(11)  # the budget spent; the backoff (60 s) would fall after the expiry
        with sessions.begin() as session:
            for item in claimed:
                queue.fail(session, item, error_message="down 42", error_code="E")
        with sessions() as session:
            spent, expired = queue.get(session, budget), queue.get(session, short)
        assert (spent.status, spent.last_error_code) == (RetryStatus.DEAD_LETTER, DEADLINE_REACHED)
        assert expired.status is RetryStatus.DEAD_LETTER
        assert "expir" in str(expired.error_message)
        one = _assert_grouped(sessions, queue, budget, statuses=1)
        two = _assert_grouped(sessions, queue, short, statuses=1)
        assert fingerprint("E", "down 42") not in (one, two)

    def test_expiry_sweep(self, sessions: Any, queue: Any, clock: ManualClock) -> None:
        with sessions.begin() as session:
            unrun = queue.enqueue(session, "e", {}, delay=30, ttl=60).id
        clock.advance(120)
        with sessions.begin() as session:
            assert queue.expire(session) == 1
        with sessions() as session:
            assert queue.get(session, unrun).last_error_code == EXPIRED
            (entry,) = queue.history(session, unrun)
        assert entry.status == "expired"
        assert entry.error_fingerprint == fingerprint(entry.error_code, entry.error_message)
        with sessions() as session:
            item = queue.get(session, unrun)
        assert item.error_fingerprint == entry.error_fingerprint is not None

    def test_stale_lock_reclaimed(self, sessions: Any, queue: Any, clock: ManualClock) -> None:
        with sessions.begin() as session:
            item_id = queue.enqueue(session, "e", {}, max_retries=3).id
        with sessions.begin() as session:
            queue.acquire(session, "crashed-1", lock_timeout=60)
        clock.advance(61)
        with sessions.begin() as session:
            queue.acquire(session, "rescuer", lock_timeout=60)
        with sessions() as session:
            (entry,) = queue.history(session, item_id)
        assert entry.status == "lock_expired"
        assert entry.error_fingerprint == fingerprint("LOCK_EXPIRED", entry.error_message)

    def test_undecryptable_item_quarantined(
        self, sessions: Any, queue: Any, clock: ManualClock
    ) -> None:
        now = clock.now()
        with sessions.begin() as session:  # sealed under a key this process lacks
            forged_id = add_undecryptable_item(session, now, "e")
        with sessions.begin() as session:
            assert queue.acquire(session, "w") == []
        _assert_grouped(sessions, queue, forged_id, statuses=1)


def _fail_once(
    sessions: Any, queue: Any, message: str, code: str, *, plugin: str, retryable: bool
) -> int:
    """A new item whose first attempt fails: dead letter (retryable) or failed (not)."""
    with sessions.begin() as session:
        item_id = queue.enqueue(session, "e", {}, plugin_name=plugin, max_retries=0).id
    with sessions.begin() as session:
        (claimed,) = queue.acquire(session, "w", batch_size=1)
        assert claimed.id == item_id
        queue.fail(session, claimed, error_message=message, error_code=code, retryable=retryable)
    return item_id


class TestErrorGroups:
    """The API's groups: per error code and fingerprint, dead letters and failed items."""

    def test_groups_and_selection_by_fingerprint(
        self, sessions: Any, queue: Any, clock: ManualClock
    ) -> None:
        http = [
            _fail_once(sessions, queue, f"HTTP 503 (request req_{n}a9f3c2)", "HTTPError", **kw)
            for n, kw in enumerate(
                [
                    {"plugin": "billing", "retryable": True},
                    {"plugin": "billing", "retryable": True},
                    {"plugin": "mail", "retryable": False},
                ]
            )
        ]
        clock.advance(5)
        other = _fail_once(
            sessions, queue, "HTTP 404 (request req_9)", "HTTPError", plugin="mail", retryable=True
        )
        with sessions.begin() as session:
            queue.enqueue(session, "e", {})  # pending: never in a group
        with sessions() as session:
            groups = queue.error_groups(session)
            dead_only = queue.error_groups(session, statuses=["dead_letter"], limit=1)
        assert [(g.error_code, g.count, g.plugins) for g in groups] == [
            ("HTTPError", 3, ("billing", "mail")),
            ("HTTPError", 1, ("mail",)),
        ]
        big = groups[0]
        assert big.fingerprint == fingerprint("HTTPError", "HTTP 503 (request req_0a9f3c2)")
        assert big.pattern == "HTTP 503 (request <id>)"
        assert big.first_seen == big.last_seen == clock.now() - timedelta(seconds=5)
        assert groups[1].last_seen == clock.now()
        assert [(g.fingerprint, g.count) for g in dead_only] == [(big.fingerprint, 2)]
        with sessions() as session:
            chosen = queue.find(session, ItemFilter(fingerprint=big.fingerprint.upper()))
            assert [item.id for item in chosen] == http
            assert {item.error_fingerprint for item in chosen} == {big.fingerprint}
        with sessions.begin() as session:
            moved = queue.requeue(session, ItemFilter(fingerprint=big.fingerprint, limit=2))
        assert moved == http[:2]
        with sessions.begin() as session:
            purged = queue.purge(session, ItemFilter(fingerprint=groups[1].fingerprint))
        assert purged == [other]

    def test_bad_arguments(self, sessions: Any, queue: Any) -> None:
        with sessions() as session:
            for bad in ({"statuses": []}, {"statuses": ["gone"]}, {"limit": 0}):
                with pytest.raises(InvalidArgument):
                    queue.error_groups(session, **bad)
            with pytest.raises(InvalidArgument, match="not a fingerprint"):
                queue.find(session, ItemFilter(fingerprint="abc"))
