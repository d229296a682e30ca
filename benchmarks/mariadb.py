"""The MariaDB/MySQL column: enqueue and drain of retryqueue on MariaDB, as its own figures.

Uses ``$RETRYQUEUE_BENCH_MYSQL_URL`` (a server URL, e.g.
``mysql+pymysql://root@127.0.0.1:3306/test``); the group is skipped when it is unset. The
run works in a database of its own, dropped at the end. These figures are not comparable
with the PostgreSQL ones beyond "same machine, same run".
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy
from sqlalchemy import func, select
from sqlalchemy.engine import URL
from sqlalchemy.orm import sessionmaker

from benchmarks import scenarios, seed
from benchmarks.harness import Figure, run_consumers
from retryqueue import NewItem, RetryQueue, create_engine, migrations
from retryqueue.engine import normalise_url
from retryqueue.models import TERMINAL_STATUSES, RetryItem

URL_ENV = "RETRYQUEUE_BENCH_MYSQL_URL"
SYSTEM = "retryqueue-mariadb"


def server_url() -> URL | None:
    """The MariaDB server to use, or None (the group is then skipped)."""
    raw = os.environ.get(URL_ENV)
    return normalise_url(raw) if raw else None


@contextmanager
def bench_database(server: URL) -> Iterator[URL]:
    """A migrated database of its own on ``server``, dropped afterwards."""
    name = f"bench_rq_{uuid.uuid4().hex[:8]}"
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE `{name}`")
        url = server.set(database=name)
        engine = create_engine(url)
        migrations.upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        admin.dispose()


def _empty(url: URL) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM daz_retry_history")
        connection.exec_driver_sql("DELETE FROM daz_retry_queue")
    engine.dispose()


def _fill(url: URL, items: int) -> None:
    engine = create_engine(url)
    sessions = sessionmaker(engine)
    queue = RetryQueue()
    for first in range(0, items, 1000):
        with sessions.begin() as session:
            queue.enqueue_many(
                session,
                [
                    NewItem(seed.EVENT_TYPE, {"i": n})
                    for n in range(first, min(items, first + 1000))
                ],
            )
    engine.dispose()


def figures(
    server: URL,
    *,
    enqueue_single: int,
    enqueue_bulk: int,
    drain_items: int,
    drains: tuple[tuple[int, int], ...],
) -> list[Figure]:
    """Enqueue (single, bulk) and drain figures on MariaDB."""
    made: list[Figure] = []
    with bench_database(server) as url:
        _empty(url)
        made.append(
            dataclasses.replace(scenarios.enqueue_single(url, enqueue_single), system=SYSTEM)
        )
        _empty(url)
        made.append(dataclasses.replace(scenarios.enqueue_bulk(url, enqueue_bulk), system=SYSTEM))
        counter_engine = create_engine(url)
        terminal = (
            select(func.count())
            .select_from(RetryItem)
            .where(RetryItem.status.in_(list(TERMINAL_STATUSES)))
        )

        def count() -> int:
            with counter_engine.connect() as connection:
                return int(connection.execute(terminal).scalar_one())

        try:
            for workers, batch in drains:
                _empty(url)
                _fill(url, drain_items)
                seconds, counted, _ = run_consumers(
                    scenarios.consume,
                    (url, batch, None),
                    processes=workers,
                    dsn="",
                    count_query="",
                    expected=drain_items,
                    timeout=300,
                    count=count,
                )
                made.append(
                    Figure(
                        "drain",
                        SYSTEM,
                        {"workers": workers, "batch": batch, "items": drain_items},
                        counted / seconds,
                        "items/s",
                        {"seconds": seconds, "counted": counted},
                    )
                )
        finally:
            counter_engine.dispose()
    return made
