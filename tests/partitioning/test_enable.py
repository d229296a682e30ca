"""Turning daz_retry_queue into monthly partitions: nothing lost, the schema as documented."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, inspect, text

from retryqueue import RetryStatus, create_engine, migrations
from retryqueue.migrations import partitioning
from tests.partitioning.conftest import NOW, Populator, at


def partition_of(engine: Engine) -> dict[int, str]:
    """The partition each queue row lives in, by id."""
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, tableoid::regclass::text FROM daz_retry_queue"))
        return {int(item_id): str(name) for item_id, name in rows.all()}


class TestEnableOnEmptyTable:
    """An empty table becomes a partitioned one with this month, months ahead, a default."""

    def test_partitions_and_schema(self, pg_engine: Engine) -> None:
        result = migrations.enable_partitioning(pg_engine, months_ahead=2, now=NOW)
        assert result.rows_copied == 0
        assert result.partitions == (
            "daz_retry_queue_p2026_06",
            "daz_retry_queue_p2026_07",
            "daz_retry_queue_p2026_08",
            "daz_retry_queue_default",
        )
        with pg_engine.connect() as connection:
            assert partitioning.is_partitioned(connection)
            found = partitioning.partitions(connection)
        assert [part.name for part in found] == list(result.partitions)
        assert found[0].lower == at(2026, 6, 1).replace(hour=0)
        assert found[-1].is_default
        schema = inspect(pg_engine)
        assert schema.get_pk_constraint("daz_retry_queue")["constrained_columns"] == [
            "id",
            "created_at",
        ]
        indexes = {index["name"]: index for index in schema.get_indexes("daz_retry_queue")}
        assert "uq_retry_queue_event_id" not in indexes
        assert not indexes["idx_retry_queue_event_id"]["unique"]
        assert "idx_retry_queue_claim" in indexes
        assert schema.get_pk_constraint("daz_retry_event_keys")["constrained_columns"] == [
            "event_id"
        ]
        # Still at the same revision: partitioning is not part of the revision chain.
        assert migrations.current(pg_engine) == migrations.heads()
        # The replaced event_id index is by design, not drift.
        assert migrations.differences(pg_engine) == []

    def test_twice_is_refused(self, pg_engine: Engine) -> None:
        migrations.enable_partitioning(pg_engine, now=NOW)
        with pytest.raises(migrations.PartitioningError, match="already partitioned"):
            migrations.enable_partitioning(pg_engine, now=NOW)

    def test_unmigrated_database_is_refused(self, pg_engine: Engine) -> None:
        migrations.downgrade(pg_engine, "retryqueue@base")
        with pytest.raises(migrations.PartitioningError, match="db upgrade"):
            migrations.enable_partitioning(pg_engine, now=NOW)


class TestEnableOnPopulatedTable:
    """Rows of several months, in every status, move to their month's partition intact."""

    def test_nothing_lost(self, pg_engine: Engine, populate: Populator) -> None:
        months = [at(2026, 1), at(2026, 3), at(2026, 4, 30), at(2026, 6)]
        ids = populate.every_status(months)
        before = populate.rows()
        result = migrations.enable_partitioning(pg_engine, months_ahead=1, now=NOW)
        assert result.rows_copied == len(ids) == len(before)
        assert populate.rows() == before
        where = partition_of(pg_engine)
        assert {where[item_id] for item_id in ids[:5]} == {"daz_retry_queue_p2026_01"}
        assert where[ids[-1]] == "daz_retry_queue_p2026_06"
        assert "daz_retry_queue_p2026_02" in {part.name for part in _partitions(pg_engine)}
        # Ids continue from the same sequence: never reused.
        assert populate.item(RetryStatus.PENDING, NOW) == max(ids) + 1

    def test_privileges_move_to_the_new_table(self, pg_engine: Engine) -> None:
        with pg_engine.begin() as connection:
            connection.execute(text("DROP ROLE IF EXISTS rq_part_app"))
            connection.execute(text("CREATE ROLE rq_part_app"))
            connection.execute(
                text("GRANT SELECT, INSERT, UPDATE ON daz_retry_queue TO rq_part_app")
            )
        migrations.enable_partitioning(pg_engine, now=NOW)
        with pg_engine.begin() as connection:
            granted = connection.execute(
                text(
                    "SELECT has_table_privilege('rq_part_app', 'daz_retry_queue', 'INSERT'), "
                    "has_table_privilege('rq_part_app', 'daz_retry_queue', 'DELETE')"
                )
            ).one()
            connection.execute(text("REVOKE ALL ON daz_retry_queue FROM rq_part_app"))
            connection.execute(text("DROP ROLE rq_part_app"))
        assert tuple(granted) == (True, False)


class TestOtherBackends:
    """Partitioning is PostgreSQL-only, and says so."""

    def test_sqlite_is_refused(self, tmp_path: object) -> None:
        engine = create_engine(f"sqlite:///{tmp_path}/queue.db")
        migrations.upgrade(engine)
        with pytest.raises(migrations.PartitioningError, match="PostgreSQL-only"):
            migrations.enable_partitioning(engine)
        with engine.connect() as connection:
            assert not partitioning.is_partitioned(connection)
            with pytest.raises(migrations.PartitioningError, match="PostgreSQL-only"):
                partitioning.create_partitions(connection)
            with pytest.raises(migrations.PartitioningError, match="PostgreSQL-only"):
                partitioning.drop_partitions(connection, 86400)
        engine.dispose()


def _partitions(engine: Engine) -> list[partitioning.Partition]:
    with engine.connect() as connection:
        return partitioning.partitions(connection)
