"""A host application's autogenerate leaves a partitioned queue alone with the hooks."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine

import retryqueue
from retryqueue import migrations
from retryqueue.migrations import partitioning


def _host_metadata() -> sa.MetaData:
    metadata = sa.MetaData()
    sa.Table("host_orders", metadata, sa.Column("id", sa.Integer, primary_key=True))
    return metadata


def _diffs(engine: Engine, **hooks: object) -> list[str]:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={"target_metadata": [_host_metadata(), retryqueue.metadata], **hooks},
        )
        return [repr(each) for each in compare_metadata(context, context.opts["target_metadata"])]


class TestHostAutogenerate:
    """Partitions, the event-key table and the replaced indexes stay out of the host's diff."""

    def test_hooks_keep_retryqueue_out(self, pg_engine: Engine) -> None:
        with pg_engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE host_orders (id integer PRIMARY KEY)")
        partitioning.enable(pg_engine)
        unguarded = " ".join(_diffs(pg_engine))
        assert partitioning.KEYS_TABLE in unguarded  # what the hooks are for
        assert "daz_retry_queue_p" in unguarded or "daz_retry_queue_default" in unguarded
        guarded = _diffs(
            pg_engine,
            include_object=migrations.include_object,
            include_name=migrations.include_name,
        )
        assert guarded == []

    def test_first_autogenerate_copies_nothing(self, pg_engine: Engine) -> None:
        """Before retryqueue's revisions ran, nothing of ours lands in the host's revision."""
        migrations.downgrade(pg_engine, "retryqueue@base")
        with pg_engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE host_orders (id integer PRIMARY KEY)")
        assert any("daz_retry_queue" in each for each in _diffs(pg_engine))
        guarded = _diffs(
            pg_engine,
            include_object=migrations.include_object,
            include_name=migrations.include_name,
        )
        assert guarded == []
