"""Poison payloads: what a hostile or careless producer or handler can send us.

A corpus of values (the encryption markers, huge/NaN/infinite numbers, deep nesting, lone
surrogates, very long strings, exceptions that raise in ``__str__``/``__repr__``,
RetryLater with absurd delays) goes through enqueue (a clear InvalidArgument, or stored
and read back unchanged), through both workers (the worker keeps running, every item ends
in a documented state with its history row) and through every CLI read command (normal
output or one clean error line, never a traceback). On SQLite, PostgreSQL and, when
RETRYQUEUE_TEST_MYSQL_URL is set, MariaDB.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from retryqueue import (
    InvalidArgument,
    ManualClock,
    RetryQueue,
    RetryStatus,
    encryption,
)
from retryqueue.cli import app
from retryqueue.encryption import MARKER, TEXT_PREFIX
from retryqueue.models import RetryHistory, RetryItem
from retryqueue.validation import MAX_JSON_DEPTH
from retryqueue.worker import PermanentError, RetryLater, Router, Worker
from retryqueue.worker._attempts import record_failure_safely
from retryqueue.worker._batch import Finished
from retryqueue.worker.failures import FailurePlan
from tests.support.async_worker import BlockingAsyncWorker
from tests.support.poison import add_undecryptable_item
from tests.support.waiting import wait_until
from tests.worker.conftest import running

pytestmark = pytest.mark.reliability


def nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = {"next": value}
    return value


def thaw(value: Any) -> Any:
    """Read-only views (mappings, tuples) back to plain dicts and lists; numbers as floats.

    Numbers compare by value: PostgreSQL's JSONB keeps a number's value, not its spelling
    (1.7976931348623157e308 comes back as the integer of that value).
    """
    if hasattr(value, "items"):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(item) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


# -- enqueue -----------------------------------------------------------------------------------

STORED: dict[str, Any] = {
    "marker beside other keys": {MARKER: "not a token", "order": 7},
    "marker nested": {"wrap": {MARKER: "gAAAAA-looks-like-fernet"}},
    "marker as a string": MARKER,
    "text prefix as data": f"{TEXT_PREFIX}gAAAAAB-not-a-token",
    "text prefix in a key": {f"{TEXT_PREFIX}x": 1},
    "largest float": {"x": 1.7976931348623157e308},
    "smallest float": {"x": 5e-324},
    "negative zero": {"x": -0.0},
    "big int": {"x": 2**53 + 1},
    "nesting at the limit": nested(MAX_JSON_DEPTH),
    "unicode planes": {"text": "émoji 😀 RTL \u202e zero-width \u200b \U0001d518"},
    "long string": {"text": "x" * 200_000},
    "many keys": {f"k{i}": i for i in range(2000)},
    "empty containers": {"a": [], "b": {}, "c": ""},
    "top-level list": [1, "two", None, True, 3.5],
}

REFUSED: dict[str, tuple[str, dict[str, Any]]] = {
    "the sealed-document marker": ("event_data", {"event_data": {MARKER: "gAAAAAB-forged"}}),
    "NaN": ("event_data", {"event_data": {"x": math.nan}}),
    "infinity": ("event_data", {"event_data": [math.inf]}),
    "nesting past the limit": ("event_data", {"event_data": nested(MAX_JSON_DEPTH + 1)}),
    "lone surrogate": ("event_data", {"event_data": {"text": "\ud800"}}),
    "lone surrogate key": ("event_data", {"event_data": {"\udfff": 1}}),
    "NUL": ("event_data", {"event_data": {"text": "a\x00b"}}),
    "over the size limit": ("event_data", {"event_data": "x" * (1024 * 1024 + 1)}),
    "surrogate in metadata": ("event_metadata", {"event_metadata": {"k": "\ud800"}}),
    "huge delay": ("delay", {"delay": 1e20}),
    "infinite delay": ("delay", {"delay": math.inf}),
    "huge int delay": ("delay", {"delay": 10**400}),
    "huge ttl": ("ttl", {"ttl": 3e11}),
    "NaN ttl": ("ttl", {"ttl": math.nan}),
    "delay past the default ttl": ("delay", {"delay": timedelta(days=8)}),
    "delay past its ttl": ("delay", {"delay": 3600, "ttl": 60}),
    "run_at past the default ttl": ("run_at", {"run_at": "+8d"}),
    "expires_at in the past": ("expires_at", {"expires_at": "-1d"}),
    "expires_at before the delay": ("expires_at", {"delay": 7200, "expires_at": "+1h"}),
    "huge max_retries": ("max_retries", {"max_retries": 10**30}),
    "long event_type": ("event_type", {"event_type": "e" * 300}),
    "long correlation id": ("correlation_id", {"correlation_id": "c" * 300}),
    "surrogate tag": ("tags[1]", {"tags": ["ok", "\ud800"]}),
}


def resolve_times(fields: dict[str, Any], queue: RetryQueue) -> dict[str, Any]:
    """'+8d' / '-1d' / '+1h' become datetimes relative to the queue's clock."""
    assert queue.clock is not None
    units = {"d": timedelta(days=1), "h": timedelta(hours=1)}
    resolved = {}
    for name, value in fields.items():
        if isinstance(value, str) and value[:1] in "+-" and value[-1:] in units:
            value = queue.clock.now() + int(value[:-1]) * units[value[-1]]
        resolved[name] = value
    return resolved


class TestEnqueue:
    """Each poison value is either refused with a clear InvalidArgument or stored faithfully."""

    def test_stored_values_round_trip(
        self, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        with sessions.begin() as session:
            ids = {
                name: queue.enqueue(session, "poison", value, event_metadata={MARKER: name}).id
                for name, value in STORED.items()
            }
        with sessions.begin() as session:
            claimed = {item.id: item for item in queue.acquire(session, "w", batch_size=100)}
        for name, value in STORED.items():
            item = claimed[ids[name]]
            assert thaw(item.event_data) == thaw(value), name
            assert thaw(item.event_metadata) == {MARKER: name}, name

    @pytest.mark.parametrize("case", sorted(REFUSED))
    def test_refused_with_a_clear_error_and_nothing_written(
        self, sessions: sessionmaker[Session], queue: RetryQueue, case: str
    ) -> None:
        field, fields = REFUSED[case]
        fields = {"event_type": "poison", "event_data": {"ok": True}, **fields}
        with sessions() as session:
            with pytest.raises(InvalidArgument) as caught:
                queue.enqueue(session, **resolve_times(fields, queue))
            session.commit()
        assert caught.value.field == field, caught.value
        with sessions() as session:
            assert session.scalars(select(RetryItem.id)).all() == []


# -- workers -----------------------------------------------------------------------------------


class Unprintable(Exception):
    """An exception whose message and repr both raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class BadCode(Exception):
    """An exception whose ``code`` attribute cannot be read."""

    @property
    def code(self) -> str:
        raise RuntimeError("no code")


class Evil(str):
    """A string whose methods raise."""

    def replace(self, *args: Any) -> str:  # type: ignore[override]
        raise RuntimeError("evil replace")

    def strip(self, *args: Any) -> str:  # type: ignore[override]
        raise RuntimeError("evil strip")


class EvilMessage(Exception):
    """An exception whose ``__str__`` returns a str subclass that breaks when used."""

    def __str__(self) -> str:
        return Evil("evil message")


class Fussy(type):
    """A metaclass whose isinstance check raises."""

    def __instancecheck__(cls, instance: object) -> bool:
        raise RuntimeError("fussy isinstance")


class FussyError(Exception, metaclass=Fussy):
    """A retry_on class that cannot be checked against."""


def retry_later_mutated(delay: float) -> RetryLater:
    """A RetryLater whose delay was changed after it was checked."""
    exc = RetryLater(5)
    exc.delay = delay
    return exc


def raiser(exc_factory: Any) -> Any:
    def handler(job: Any) -> None:
        raise exc_factory()

    return handler


HANDLERS: dict[str, Any] = {
    "ok": lambda job: None,
    "retry-later-inf": raiser(lambda: RetryLater(math.inf)),
    "retry-later-nan": raiser(lambda: RetryLater(math.nan)),
    "retry-later-huge": raiser(lambda: RetryLater(3e11)),
    "retry-later-negative": raiser(lambda: RetryLater(-1)),
    "retry-later-mutated-inf": raiser(lambda: retry_later_mutated(math.inf)),
    "retry-later-mutated-huge": raiser(lambda: retry_later_mutated(3e11)),
    "unprintable": raiser(Unprintable),
    "bad-code": raiser(BadCode),
    "prefix-message": raiser(lambda: PermanentError(f"{TEXT_PREFIX}gAAAAAB-not-a-token")),
    "escape-message": raiser(lambda: PermanentError("rq-plain:looks escaped")),
    "surrogate-message": raiser(lambda: ValueError("bad \ud800 byte\x00")),
    "huge-message": raiser(lambda: ValueError("m" * 2_000_000)),
    "evil-message": raiser(EvilMessage),
}


def poison_router() -> Router:
    """HANDLERS, plus a route whose retry_on check raises while the outcome is planned."""
    router = Router(HANDLERS)
    router.add("fussy", raiser(ValueError), retry_on=FussyError)
    return router


# What each item must have become after one attempt (max_retries=2): a documented state.
EXPECTED = {
    "ok": RetryStatus.COMPLETED,
    "prefix-message": RetryStatus.FAILED,
    "escape-message": RetryStatus.FAILED,
}


def make_worker(kind: str, queue: RetryQueue, sessions: sessionmaker[Session], **kw: Any) -> Any:
    if kind == "asyncio":
        return BlockingAsyncWorker(queue, sessions, poison_router(), **kw)
    return Worker(queue, sessions, poison_router(), **kw)


def attempts(sessions: sessionmaker[Session]) -> dict[int, list[Any]]:
    with sessions() as session:
        rows = session.execute(select(RetryHistory).order_by(RetryHistory.id)).scalars().all()
    found: dict[int, list[Any]] = {}
    for row in rows:
        found.setdefault(row.retry_queue_id, []).append(row)
    return found


@pytest.fixture
def keys() -> Iterator[list[str]]:
    """Two fresh encryption keys; encryption is switched off again after the test."""
    made = [encryption.generate_key(), encryption.generate_key()]
    yield made
    encryption.configure(None)


@pytest.mark.parametrize("kind", ["threads", "asyncio"])
class TestWorkers:
    """Both workers survive every poison item and leave each in a documented state."""

    def test_poison_handlers_are_contained_per_item(
        self, kind: str, sessions: sessionmaker[Session], queue: RetryQueue
    ) -> None:
        with sessions.begin() as session:
            ids = {
                name: queue.enqueue(session, name, {"n": 1}, max_retries=2).id
                for name in [*HANDLERS, "fussy"]
            }
        worker = make_worker(kind, queue, sessions, batch_size=len(ids), poll_interval=0.05)
        with running(worker) as handle:
            wait_until(
                lambda: handle.error or len(attempts(sessions)) == len(ids),
                what="one recorded attempt per item",
            )
            assert not handle.thread.is_alive() or not handle.error
            report = handle.stop()
        assert report.acquired == len(ids)
        history = attempts(sessions)
        with sessions() as session:
            items = {row.id: row for row in session.scalars(select(RetryItem))}
        for name, item_id in ids.items():
            item, rows = items[item_id], history[item_id]
            assert len(rows) == 1, name
            expected = EXPECTED.get(name, RetryStatus.PENDING)
            assert item.status is expected, (name, item.status, item.error_message)
            assert item.locked_by is None, name
            if expected is RetryStatus.PENDING:
                assert rows[0].status == "retry_scheduled", name
                assert item.retry_count == 1, name
                # due within the capped backoff, never in year 11533
                assert item.next_retry_at - queue.clock.now() <= timedelta(days=1), name  # type: ignore[union-attr]
            if expected is not RetryStatus.COMPLETED:
                assert item.error_message and rows[0].error_message, name
        messages = {name: items[item_id].error_message for name, item_id in ids.items()}
        assert messages["prefix-message"] == f"{TEXT_PREFIX}gAAAAAB-not-a-token"
        assert messages["escape-message"] == "rq-plain:looks escaped"
        assert history[ids["prefix-message"]][0].error_message == messages["prefix-message"]
        assert "could not be read" in str(messages["unprintable"])
        assert "finite" in str(messages["retry-later-inf"])
        assert "at most" in str(messages["retry-later-huge"])
        assert "ignored" in str(messages["retry-later-mutated-huge"])
        assert items[ids["bad-code"]].last_error_code == "BadCode"
        assert messages["evil-message"] == "evil message"
        fussy = items[ids["fussy"]]  # planning itself raised: contained as OUTCOME_ERROR
        assert fussy.last_error_code == "OUTCOME_ERROR"
        assert "could not be planned" in str(fussy.error_message)
        assert "fussy isinstance" in str(fussy.error_message)

    def test_undecryptable_items_are_quarantined(
        self,
        kind: str,
        sessions: sessionmaker[Session],
        queue: RetryQueue,
        keys: list[str],
    ) -> None:
        old, new = keys
        now = queue.clock.now()  # type: ignore[union-attr]
        with sessions.begin() as session:  # a row written by an older version, or forged
            forged_id = add_undecryptable_item(session, now, "ok")
        encryption.configure([new, old])  # a producer that already has the new key
        with sessions.begin() as session:
            sealed_new = queue.enqueue(session, "ok", {"secret": 1}).id
        encryption.configure([old])  # a worker that does not
        with sessions.begin() as session:
            sealed_old = queue.enqueue(session, "ok", {"secret": 2}).id
            plain = [queue.enqueue(session, "ok", {"n": n}).id for n in range(3)]
        worker = make_worker(kind, queue, sessions, batch_size=2, poll_interval=0.05)
        with running(worker) as handle:
            wait_until(
                lambda: handle.error or len(attempts(sessions)) == 6,
                what="every item attempted once",
            )
            report = handle.stop()
        assert report.completed == 4
        history = attempts(sessions)
        with sessions() as session:
            for item_id in (sealed_new, forged_id):
                row = session.get_one(RetryItem, item_id)
                assert row.status is RetryStatus.DEAD_LETTER
                assert row.last_error_code == "UNDECRYPTABLE"
                assert row.retry_count == 1
                (attempt,) = history[item_id]
                assert (attempt.status, attempt.attempt_number) == ("dead_lettered", 1)
                assert "cannot be decrypted" in str(attempt.error_message)
            for item_id in (sealed_old, *plain):
                assert session.get_one(RetryItem, item_id).status is RetryStatus.COMPLETED
        with sessions() as session:  # reads show the item as undecryptable, never raise
            assert queue.get(session, sealed_new).status is RetryStatus.DEAD_LETTER
            assert isinstance(session.get_one(RetryItem, sealed_new).event_data, str)
        encryption.configure([new, old])  # the right key is back: requeue and it runs
        with sessions.begin() as session:
            assert queue.requeue(session, [sealed_new]) == [sealed_new]
        with sessions.begin() as session:
            (claimed,) = queue.acquire(session, "w")
            assert dict(claimed.event_data) == {"secret": 1}


def test_an_outcome_the_queue_refuses_is_recorded_as_a_contained_failure(
    sessions: sessionmaker[Session], queue: RetryQueue
) -> None:
    """record_failure_safely: a plan the queue refuses still ends as a recorded failure."""
    with sessions.begin() as session:
        queue.enqueue(session, "e", {}, max_retries=2)
        queue.enqueue(session, "e", {}, max_retries=2)
    with sessions.begin() as session:
        first, second = queue.acquire(session, "w", batch_size=2)
    decision = queue.policy.decide(
        retry_count=0, max_retries=2, retry_delay_seconds=60, backoff_multiplier=2
    )
    bad = FailurePlan("boom", "E", True, math.inf, None, decision)
    good = FailurePlan("boom", "E", True, None, None, decision)
    with sessions.begin() as session:
        outcomes = [
            record_failure_safely(queue, session, Finished(item, None, None, 0.01), plan)
            for item, plan in ((first, bad), (second, good))
        ]
    assert outcomes == ["retry_scheduled", "retry_scheduled"]
    with sessions() as session:
        refused = session.get_one(RetryItem, first.id)
        assert (refused.status, refused.last_error_code) == (RetryStatus.PENDING, "OUTCOME_ERROR")
        assert "could not be recorded" in str(refused.error_message)
        assert "retry_after" in str(refused.error_message)
        assert session.get_one(RetryItem, second.id).last_error_code == "E"


# -- CLI reads ---------------------------------------------------------------------------------


def cli(url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["--database-url", url, *args], catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args}: {result.exception!r}") from result.exception
    return result.exit_code, result.stdout, result.stderr


def test_cli_reads_survive_poison_rows(
    engine: Engine, sessions: sessionmaker[Session], keys: list[str], clock: ManualClock
) -> None:
    queue = RetryQueue(clock=clock)
    url = engine.url.render_as_string(hide_password=False)
    encryption.configure(keys[:1])
    with sessions.begin() as session:
        sealed = queue.enqueue(session, "sealed", {"secret": 1}, max_retries=0).id
    with sessions.begin() as session:
        (claimed,) = queue.acquire(session, "w", lock_timeout=1e7)
        queue.fail(session, claimed, error_message="sealed secret error")
    encryption.configure(None)  # the reader has no key
    with sessions.begin() as session:
        ids = [
            sealed,
            queue.enqueue(session, "prefix", {MARKER: 1, "x": 2}, max_retries=0).id,
            queue.enqueue(session, "stuck", {"t": "😀\u202e"}).id,
        ]
    with sessions.begin() as session:
        for item in queue.acquire(session, "w", batch_size=5, lock_timeout=1e7):
            if item.event_type == "prefix":
                queue.fail(session, item, error_message=f"{TEXT_PREFIX}x\u202e" + "y" * 5000)
    clock.advance(7200)
    commands = [
        ["stats"],
        ["stats", "--json"],
        ["alerts"],
        ["alerts", "--json"],
        ["dead-letters"],
        ["dead-letters", "--json"],
        ["stuck", "--older-than", "1s"],
        ["stuck", "--older-than", "1s", "--json"],
        ["stuck", "--older-than", "99999999999d"],
        ["stuck", "--older-than", "inf"],
        ["stuck", "--older-than", "nan"],
        ["show", "999999999"],
        ["history", "999999999"],
        ["success-rate"],
        ["throughput", "--hours", "999999999"],
    ]
    for item_id in ids:
        commands += [["show", str(item_id)], ["history", str(item_id)]]
        commands += [["show", str(item_id), "--json"], ["history", str(item_id), "--json"]]
    for args in commands:
        code, out, err = cli(url, *args)
        assert code in (0, 1), (args, code, err)
        assert "Traceback" not in out + err, args
        if code == 1:
            assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), (args, err)
    code, out, _ = cli(url, "history", str(sealed), "--json")
    assert code == 0 and "undecryptable" in out
    code, out, _ = cli(url, "show", str(ids[1]), "--json")
    assert code == 0 and TEXT_PREFIX in out
    code, _, err = cli(url, "stuck", "--older-than", "inf")
    assert code == 1 and "--older-than" in err
