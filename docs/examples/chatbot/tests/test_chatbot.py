"""The example bot's tests: they use only retryqueue's testing kit (no conftest code)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session

from chatbot.app import (
    CHAT_EVENT,
    MEDIA_EVENT,
    ChatBot,
    RateLimited,
    StoreUnavailable,
    UnknownMedia,
)
from retryqueue import RetryQueue, RetryStatus
from retryqueue.testing import ManualClock, assert_enqueued, assert_not_enqueued, drain
from retryqueue.testing.factories import RetryItemFactory


class FlakyStore:
    """A message store that fails a given number of times, then works."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.saved: list[tuple[str, str, str]] = []

    def save(self, channel: str, user: str, message: str) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable("connection refused")
        self.saved.append((channel, user, message))


class FakeMedia:
    """A media API with scripted answers: 'ok', 'limited', 'unknown'."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)

    def lookup(self, media_id: str) -> dict[str, Any]:
        answer = self.answers.pop(0) if self.answers else "ok"
        if answer == "limited":
            raise RateLimited(retry_after=120)
        if answer == "unknown":
            raise UnknownMedia(media_id)
        return {"id": media_id, "title": "Manos"}


CHAT = {"user": "crow", "message": "hi"}


def test_a_failed_store_write_is_enqueued_with_the_right_priority(
    rq_session: Session, rq_queue: RetryQueue
) -> None:
    bot = ChatBot(rq_queue, FlakyStore(failures=1), FakeMedia())
    bot.on_event(rq_session, CHAT_EVENT, "RIFFTRAX_MST3K", CHAT)
    (item,) = assert_enqueued(
        rq_session,
        event_type=CHAT_EVENT,
        plugin_name="sql",
        channel_name="RIFFTRAX_MST3K",
        priority=7,
        event_data={"user": "crow"},
    )
    assert item.max_retries == 5


def test_a_working_store_enqueues_nothing(rq_session: Session, rq_queue: RetryQueue) -> None:
    store = FlakyStore()
    ChatBot(rq_queue, store, FakeMedia()).on_event(rq_session, CHAT_EVENT, "c", CHAT)
    assert_not_enqueued(rq_session, event_type=CHAT_EVENT)
    assert store.saved == [("c", "crow", "hi")]


def test_the_retry_succeeds_once_the_store_is_back(
    rq_session: Session, rq_queue: RetryQueue, rq_clock: ManualClock
) -> None:
    store = FlakyStore(failures=3)  # the first try and two retries fail
    bot = ChatBot(rq_queue, store, FakeMedia())
    bot.on_event(rq_session, CHAT_EVENT, "c", CHAT)
    start = rq_clock.now()
    report = drain(rq_queue, rq_session, bot.router(), advance_clock=True)
    (done,) = report.by_status(RetryStatus.COMPLETED)
    assert done.attempts == 3
    assert store.saved == [("c", "crow", "hi")]
    assert (rq_clock.now() - start).total_seconds() == 30 + 60  # two backoffs, no sleeping


def test_a_store_that_stays_down_dead_letters_and_alerts(
    rq_session: Session, rq_queue: RetryQueue
) -> None:
    bot = ChatBot(rq_queue, FlakyStore(failures=100), FakeMedia())
    bot.on_event(rq_session, CHAT_EVENT, "c", CHAT)
    report = drain(rq_queue, rq_session, bot.router(), advance_clock=True)
    (dead,) = report.by_status("dead_letter")
    assert (dead.attempts, dead.error_code) == (6, "STORE_DOWN")
    (alert,) = rq_queue.alerts(rq_session)
    assert alert.reason.startswith("dead letter")


def test_rate_limited_media_waits_for_retry_after(
    rq_session: Session, rq_queue: RetryQueue, rq_clock: ManualClock
) -> None:
    bot = ChatBot(rq_queue, FlakyStore(), FakeMedia("limited", "limited", "ok"))
    bot.on_event(rq_session, MEDIA_EVENT, "c", {"id": "yt:abc"})
    assert_enqueued(rq_session, plugin_name="media", priority=3)
    assert drain(rq_queue, rq_session, bot.router()).items == {}  # not due yet
    report = drain(rq_queue, rq_session, bot.router(), advance_clock=True)
    (done,) = report.items.values()
    assert (done.status, done.attempts) == (RetryStatus.COMPLETED, 2)


def test_unknown_media_fails_permanently(rq_session: Session, rq_queue: RetryQueue) -> None:
    bot = ChatBot(rq_queue, FlakyStore(), FakeMedia("unknown"))
    RetryItemFactory(event_type=MEDIA_EVENT, plugin_name="media", event_data={"id": "nope"})
    report = drain(rq_queue, rq_session, bot.router())
    (failed,) = report.items.values()
    assert (failed.status, failed.error_code, failed.attempts) == (
        RetryStatus.FAILED,
        "UNKNOWN_MEDIA",
        1,
    )


def test_events_without_a_handler_are_failed_not_dropped(
    rq_session: Session, rq_queue: RetryQueue
) -> None:
    bot = ChatBot(rq_queue, FlakyStore(), FakeMedia())
    RetryItemFactory(event_type="cytube.event.poll", plugin_name="polls")
    report = drain(rq_queue, rq_session, bot.router())
    (item,) = report.items.values()
    assert (item.status, item.error_code) == (RetryStatus.FAILED, "NO_HANDLER")


def test_assertion_failures_list_the_queue(rq_session: Session) -> None:
    RetryItemFactory(event_type=CHAT_EVENT, priority=2)
    with pytest.raises(AssertionError, match=r"(?s)found 0.*cytube.event.chatMsg.*priority=2"):
        assert_enqueued(rq_session, event_type=CHAT_EVENT, priority=9)
