"""Databases made by the earlier rq0001 (guessed names, no comments) reach the same head."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect
from sqlalchemy.orm import Session

from retryqueue import RetryQueue, migrations
from retryqueue.migrations import partitioning
from tests.support.revisions import after

# (reference name, the earlier rq0001's name) of the indexes it named differently
INDEXES = (
    ("idx_retry_queue_locked_by", "idx_retry_queue_locked"),
    ("idx_retry_queue_expired", "idx_retry_queue_expires_at"),
)
CHECK = ("daz_retry_queue_priority_check", "ck_daz_retry_queue_ck_daz_retry_queue_priority_range")
PRIMARY_KEYS = (
    ("daz_retry_queue", "daz_retry_queue_pkey", "pk_daz_retry_queue"),
    ("daz_retry_history", "daz_retry_history_pkey", "pk_daz_retry_history"),
)
COMMENTED = (
    ("event_id", sa.Uuid(), "uuid"),
    ("priority", sa.Integer(), "5"),
    ("backoff_multiplier", sa.Numeric(3, 2), "2.0"),
)


def as_earlier_rq0001_made_it(engine: Engine) -> None:
    """Give a migrated database the names and (missing) comments of the earlier rq0001."""
    dialect = engine.dialect.name
    with engine.begin() as connection:
        present = {i["name"] for i in inspect(connection).get_indexes("daz_retry_queue")}
        renames = [each for each in INDEXES if each[0] in present]
        if "idx_retry_queue_priority_status" in present:  # before rq0003
            renames.append(("idx_retry_queue_priority_status", "idx_retry_queue_priority"))
        for reference, guessed in renames:
            if dialect == "postgresql":
                connection.exec_driver_sql(f"ALTER INDEX {reference} RENAME TO {guessed}")
            elif dialect == "mysql":
                connection.exec_driver_sql(
                    f"ALTER TABLE daz_retry_queue RENAME INDEX {reference} TO {guessed}"
                )
            else:
                definition = connection.exec_driver_sql(
                    "SELECT sql FROM sqlite_master WHERE name = ?", (reference,)
                ).scalar_one()
                connection.exec_driver_sql(f"DROP INDEX {reference}")
                connection.exec_driver_sql(definition.replace(reference, guessed, 1))
        if dialect == "sqlite":
            return  # no comments, and rq0005 does not rename SQLite's constraints
        if dialect == "postgresql":
            for table, reference, guessed in (*PRIMARY_KEYS, ("daz_retry_queue", *CHECK)):
                connection.exec_driver_sql(
                    f"ALTER TABLE {table} RENAME CONSTRAINT {reference} TO {guessed}"
                )
        else:
            connection.exec_driver_sql(
                f"ALTER TABLE daz_retry_queue DROP CONSTRAINT {CHECK[0]}, "
                f"ADD CONSTRAINT {CHECK[1]} CHECK (priority >= 1 AND priority <= 10)"
            )
        operations = Operations(MigrationContext.configure(connection))
        operations.drop_table_comment("daz_retry_queue")
        uuid_default = "(replace(uuid(), '-', ''))" if dialect == "mysql" else "gen_random_uuid()"
        for name, type_, default in COMMENTED:
            operations.alter_column(
                "daz_retry_queue",
                name,
                comment=None,
                existing_type=type_,
                existing_nullable=False,
                existing_server_default=sa.text(uuid_default if default == "uuid" else default),
            )


def constraint_names(engine: Engine) -> set[str]:
    """The primary key and check constraint names of the queue tables (PostgreSQL, MariaDB)."""
    found: set[str] = set()
    inspector = inspect(engine)
    for table in ("daz_retry_queue", "daz_retry_history"):
        name = inspector.get_pk_constraint(table).get("name")
        found |= {name} if name else set()
        found |= {c["name"] for c in inspector.get_check_constraints(table) if c["name"]}
    return found


def works(engine: Engine) -> None:
    """Enqueue, acquire and complete: the service runs on the migrated database."""
    queue = RetryQueue()
    with Session(engine) as session, session.begin():
        queue.enqueue(session, "older.database", {"n": 1}, priority=9)
    with Session(engine) as session, session.begin():
        (item,) = queue.acquire(session, "worker-1")
        assert item.priority == 9
        assert queue.complete(session, item)


class TestEarlierRq0001:
    """rq0005 renames what the earlier rq0001 guessed; every backend ends at the models."""

    def test_upgrade_renames_to_the_reference(self, empty_engine: Engine) -> None:
        migrations.upgrade(empty_engine, "rq0004")
        as_earlier_rq0001_made_it(empty_engine)
        before = migrations.differences(empty_engine)
        assert before  # the guessed index names (and, but on SQLite, the comments) differ
        assert migrations.upgrade(empty_engine) == after("rq0004")
        assert migrations.differences(empty_engine) == []
        names = {i["name"] for i in inspect(empty_engine).get_indexes("daz_retry_queue")}
        assert {"idx_retry_queue_locked_by", "idx_retry_queue_expired"} <= names
        assert not names & {"idx_retry_queue_locked", "idx_retry_queue_expires_at"}
        if empty_engine.dialect.name == "postgresql":
            assert {"daz_retry_queue_pkey", "daz_retry_history_pkey", CHECK[0]} <= (
                constraint_names(empty_engine)
            )
        if empty_engine.dialect.name == "mysql":
            assert CHECK[0] in constraint_names(empty_engine)
        works(empty_engine)

    def test_from_before_rq0003(self, empty_engine: Engine) -> None:
        """rq0003 drops the priority index under the earlier name too."""
        migrations.upgrade(empty_engine, "rq0002")
        as_earlier_rq0001_made_it(empty_engine)
        assert migrations.upgrade(empty_engine) == after("rq0002")
        assert migrations.differences(empty_engine) == []
        assert migrations.downgrade(empty_engine, "rq0002") == after("rq0002")[::-1]
        names = {i["name"] for i in inspect(empty_engine).get_indexes("daz_retry_queue")}
        assert "idx_retry_queue_priority_status" in names
        migrations.upgrade(empty_engine)
        assert migrations.differences(empty_engine) == []

    def test_already_reference_names_change_nothing(self, empty_engine: Engine) -> None:
        migrations.upgrade(empty_engine)
        assert migrations.differences(empty_engine) == []
        assert migrations.downgrade(empty_engine, "rq0004") == after("rq0004")[::-1]
        assert migrations.upgrade(empty_engine) == after("rq0004")
        assert migrations.differences(empty_engine) == []

    @pytest.mark.parametrize("backend", ["postgresql"])
    def test_partitioning_keeps_the_primary_key_name(self, empty_engine: Engine) -> None:
        """Partition enable before rq0005 keeps the guessed key name; rq0005 renames it."""
        migrations.upgrade(empty_engine, "rq0004")
        as_earlier_rq0001_made_it(empty_engine)
        partitioning.enable(empty_engine)
        assert "pk_daz_retry_queue" in constraint_names(empty_engine)
        migrations.upgrade(empty_engine)
        assert "daz_retry_queue_pkey" in constraint_names(empty_engine)
        assert migrations.differences(empty_engine) == []
        works(empty_engine)
