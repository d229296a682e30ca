"""Database URLs and passwords never appear in the library's errors or the worker's logs."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
from sqlalchemy.orm import sessionmaker

from retryqueue import DatabaseError, InvalidArgument, RetryQueue, create_engine
from retryqueue.worker import Worker

pytestmark = pytest.mark.reliability

SECRET = "s3cr3t-Pa55w0rd"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def unreachable_url() -> str:
    return f"postgresql://app:{SECRET}@127.0.0.1:{free_port()}/app?connect_timeout=2"


def test_an_unparseable_url_is_not_echoed() -> None:
    with pytest.raises(InvalidArgument) as caught:
        create_engine(f"postgresql://app:{SECRET}@[::1/app")
    assert SECRET not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_connection_errors_name_no_password() -> None:
    engine = create_engine(unreachable_url())
    try:
        with sessionmaker(engine)() as session, pytest.raises(DatabaseError) as caught:
            RetryQueue().acquire(session, "w1")
        assert SECRET not in str(caught.value)
        assert "acquire failed" in str(caught.value)
        assert SECRET not in repr(engine)
    finally:
        engine.dispose()


def test_worker_logs_name_no_password(caplog: pytest.LogCaptureFixture) -> None:
    engine = create_engine(unreachable_url())
    worker = Worker(RetryQueue(), sessionmaker(engine), {}, listen=False, poll_interval=0.1)
    runner = threading.Thread(target=worker.run, daemon=True)
    try:
        with caplog.at_level(logging.DEBUG, logger="retryqueue"):
            runner.start()
            deadline = time.monotonic() + 15
            while not any("database unavailable" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the worker never reported the outage"
                time.sleep(0.05)
            worker.stop()
            runner.join(15)
    finally:
        worker.stop()
        engine.dispose()
    assert not runner.is_alive()
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "database unavailable" in text
    assert SECRET not in text
