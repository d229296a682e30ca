"""Encryption at rest of event_data and error_message: transparent, rotatable, never silent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from retryqueue import ManualClock, RetryQueue, RetryStatus, encryption, migrations
from retryqueue.cli import app
from retryqueue.encryption import EncryptionError, Undecryptable
from retryqueue.fingerprint import add_rule, fingerprint, reset_rules
from retryqueue.testing import drain

pytestmark = pytest.mark.reliability

SECRET_DATA = {"card": "4111-1111-1111-1111", "name": "Joel Robinson"}
SECRET_ERROR = "declined for Joel Robinson"


@pytest.fixture
def keys() -> Iterator[list[str]]:
    """Two fresh keys; encryption is switched off again after the test."""
    made = [encryption.generate_key(), encryption.generate_key()]
    yield made
    encryption.configure(None)


def raw(engine: Engine, sql: str) -> list[str]:
    """Column values as the database holds them, bypassing the types."""
    with engine.connect() as connection:
        return [str(value) for value in connection.execute(text(sql)).scalars()]


def fail_once(sessions: sessionmaker[Session], queue: RetryQueue) -> int:
    with sessions.begin() as session:
        item_id = queue.enqueue(session, "payment.capture", SECRET_DATA, plugin_name="pay").id
    with sessions.begin() as session:
        (claimed,) = queue.acquire(session, "w1")
        assert dict(claimed.event_data) == SECRET_DATA  # the handler sees plaintext
        queue.fail(session, claimed, error_message=SECRET_ERROR, error_code="DECLINED")
    return item_id


def test_sealed_at_rest_and_transparent(
    engine: Engine, sessions: sessionmaker[Session], queue: RetryQueue, keys: list[str]
) -> None:
    encryption.configure(keys[:1])
    item_id = fail_once(sessions, queue)
    stored = " ".join(
        raw(engine, "SELECT event_data FROM daz_retry_queue")
        + raw(engine, "SELECT error_message FROM daz_retry_queue")
        + raw(engine, "SELECT error_message FROM daz_retry_history")
    )
    assert "4111" not in stored and "Joel" not in stored
    assert encryption.TEXT_PREFIX in stored
    with sessions() as session:  # stats, alerts, history keep working
        (stat,) = queue.stats(session)
        assert (stat.status, stat.plugin_name) == (RetryStatus.PENDING, "pay")
        assert queue.get(session, item_id).error_message == SECRET_ERROR
        assert queue.history(session, item_id)[0].error_message == SECRET_ERROR
    assert migrations.differences(engine) == []


def test_a_wrong_or_missing_key_reads_as_undecryptable_never_raises(
    sessions: sessionmaker[Session], queue: RetryQueue, keys: list[str]
) -> None:
    encryption.configure(keys[:1])
    item_id = fail_once(sessions, queue)
    encryption.configure(keys[1:])  # a different key
    with sessions() as session:
        message = queue.get(session, item_id).error_message
    assert isinstance(message, Undecryptable) and "wrong key" in message.reason
    assert "undecryptable" in message and "Joel" not in message
    encryption.configure(None)
    with sessions() as session:
        (entry,) = queue.history(session, item_id)
        stats = queue.stats(session)
    assert isinstance(entry.error_message, Undecryptable)
    assert "no key is configured" in entry.error_message.reason
    assert stats[0].count == 1


def test_rotation_stops_at_a_value_it_cannot_decrypt(
    engine: Engine, sessions: sessionmaker[Session], queue: RetryQueue, keys: list[str]
) -> None:
    old, new = keys
    encryption.configure([old])
    fail_once(sessions, queue)
    before = raw(engine, "SELECT error_message FROM daz_retry_queue")
    encryption.configure([new])  # the old key was dropped too early
    with sessions() as session, pytest.raises(EncryptionError, match="cannot be decrypted"):
        list(queue.iter_rotate_keys(session))
    assert raw(engine, "SELECT error_message FROM daz_retry_queue") == before
    encryption.configure([new, old])  # with the old key back, rotation completes
    with sessions() as session:
        assert sum(queue.iter_rotate_keys(session)) == 2
        session.commit()


def test_plaintext_that_looks_sealed_is_stored_escaped(
    engine: Engine, sessions: sessionmaker[Session], queue: RetryQueue
) -> None:
    with sessions.begin() as session:
        item_id = queue.enqueue(session, "e", {}, max_retries=0).id
    looks_sealed = f"{encryption.TEXT_PREFIX}gAAAAAB-handler-text"
    with sessions.begin() as session:
        (claimed,) = queue.acquire(session, "w1")
        queue.fail(session, claimed, error_message=looks_sealed)
    with sessions() as session:
        assert queue.get(session, item_id).error_message == looks_sealed
        assert queue.history(session, item_id)[0].error_message == looks_sealed
    stored = raw(engine, "SELECT error_message FROM daz_retry_queue")
    assert stored == [encryption.PLAIN_PREFIX + looks_sealed]


def test_rotation_re_encrypts_under_the_new_key(
    engine: Engine,
    sessions: sessionmaker[Session],
    queue: RetryQueue,
    clock: ManualClock,
    keys: list[str],
) -> None:
    old, new = keys
    encryption.configure([old])
    item_id = fail_once(sessions, queue)
    encryption.configure([new, old])  # new key first: it encrypts, both decrypt
    with sessions() as session:
        batches = list(queue.iter_rotate_keys(session, batch_size=1))
        session.commit()
    assert sum(batches) == 2  # one queue row, one history row with an error
    encryption.configure([new])  # the old key is gone: everything must still read
    with sessions() as session:
        assert queue.get(session, item_id).error_message == SECRET_ERROR
    clock.advance(3600)
    with sessions.begin() as session:
        report = drain(queue, session, {"payment.*": lambda job: None})
    assert report[item_id].status is RetryStatus.COMPLETED


def test_plaintext_rows_stay_readable_and_get_sealed_by_rotation(
    engine: Engine, sessions: sessionmaker[Session], queue: RetryQueue, keys: list[str]
) -> None:
    item_id = fail_once(sessions, queue)  # written before encryption was turned on
    encryption.configure(keys[:1])
    with sessions() as session:
        assert queue.get(session, item_id).error_message == SECRET_ERROR
        list(queue.iter_rotate_keys(session))
        session.commit()
    assert "Joel" not in " ".join(raw(engine, "SELECT error_message FROM daz_retry_queue"))


def test_bad_keys_are_refused() -> None:
    with pytest.raises(EncryptionError, match="invalid encryption key"):
        encryption.configure(["not-a-key"])


def test_rotate_keys_command(
    engine: Engine,
    sessions: sessionmaker[Session],
    queue: RetryQueue,
    keys: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = engine.url.render_as_string(hide_password=False)
    fail_once(sessions, queue)  # plaintext
    encryption.configure(None)
    monkeypatch.delenv(encryption.KEYS_ENV, raising=False)
    refused = CliRunner().invoke(app, ["--database-url", url, "rotate-keys"])
    assert refused.exit_code == 1 and "no encryption keys configured" in refused.output
    encryption.configure(keys[:1])
    done = CliRunner().invoke(app, ["--database-url", url, "rotate-keys", "--batch-size", "1"])
    assert done.exit_code == 0, done.output
    assert "re-encrypted 2 stored value(s)" in done.output
    assert "Joel" not in " ".join(raw(engine, "SELECT error_message FROM daz_retry_history"))


def test_refingerprint_reads_sealed_messages_and_skips_undecryptable_ones(
    sessions: sessionmaker[Session], queue: RetryQueue, keys: list[str]
) -> None:
    """Fingerprints are of the plaintext: a sealed message is read with its key and
    regrouped under the rules in force; one no configured key opens is left as it is
    (never regrouped from its ciphertext)."""
    encryption.configure(keys[:1])
    readable = fail_once(sessions, queue)
    encryption.configure(keys[1:])  # the first key is gone: that message cannot be read
    sealed_elsewhere = fail_once(sessions, queue)
    stored = {readable: "", sealed_elsewhere: ""}
    with sessions() as session:
        for item_id in stored:
            stored[item_id] = str(queue.get(session, item_id).error_fingerprint)
    add_rule(r"Joel Robinson", "<name>")
    try:
        with sessions.begin() as session:
            assert list(queue.iter_refingerprint(session)) == [(2, 1)]
        regrouped = fingerprint("DECLINED", "declined for <name>")
        with sessions() as session:
            assert queue.get(session, sealed_elsewhere).error_fingerprint == regrouped
            assert queue.get(session, readable).error_fingerprint == stored[readable]
    finally:
        reset_rules()
