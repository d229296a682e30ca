"""The shipped revisions: one head, upgrade/compare/downgrade on every backend."""

from __future__ import annotations

import textwrap
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, inspect

from retryqueue import migrations
from tests.support.revisions import HEAD

ROOT = Path(__file__).resolve().parents[2]


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


class TestRevisions:
    """The revision graph is a single line on the ``retryqueue`` branch."""

    def test_single_head(self) -> None:
        assert migrations.heads() == [HEAD]

    def test_first_revision_carries_the_branch_label(self) -> None:
        base = migrations.script_directory().get_revision("rq0001")
        assert base is not None and "retryqueue" in base.branch_labels


class TestUpgradeCompareDowngrade:
    """base → head gives exactly the models' schema; downgrade removes everything."""

    def test_round_trip(self, empty_engine: Engine) -> None:
        assert migrations.current(empty_engine) == []
        migrations.upgrade(empty_engine)
        assert migrations.current(empty_engine) == [HEAD]
        assert {
            "daz_retry_queue",
            "daz_retry_history",
            "daz_retry_circuits",
            "daz_retry_circuit_events",
            "daz_retry_audit",
            "daz_retry_workers",
            "daz_retry_limits",
        } <= table_names(empty_engine)
        assert migrations.differences(empty_engine) == []
        migrations.downgrade(empty_engine, "rq0009")
        assert "daz_retry_limits" not in table_names(empty_engine)
        migrations.downgrade(empty_engine, "rq0004")
        assert not {"daz_retry_audit", "daz_retry_workers"} & table_names(empty_engine)
        assert "exception_type" not in {
            c["name"] for c in inspect(empty_engine).get_columns("daz_retry_history")
        }
        migrations.downgrade(empty_engine, "rq0003")
        assert "daz_retry_circuits" not in table_names(empty_engine)
        assert "daz_retry_circuit_events" not in table_names(empty_engine)
        migrations.downgrade(empty_engine, "rq0001")
        assert "lease_token" not in {
            c["name"] for c in inspect(empty_engine).get_columns("daz_retry_queue")
        }
        migrations.upgrade(empty_engine)
        assert migrations.differences(empty_engine) == []
        migrations.downgrade(empty_engine, "retryqueue@base")
        assert table_names(empty_engine) <= {migrations.VERSION_TABLE}
        assert migrations.current(empty_engine) == []

    def test_offline_sql_renders_for_postgresql(self) -> None:
        script = migrations.offline_sql("postgresql")
        assert "CREATE TYPE retry_status AS ENUM" in script
        assert "CREATE UNIQUE INDEX uq_retry_queue_event_id" in script
        assert "USING gin" in script


class TestHostApplication:
    """An application with its own alembic includes the revisions via version_locations."""

    def test_host_branch_and_ours_share_one_version_table(
        self, tmp_path: Path, empty_engine: Engine
    ) -> None:
        host = tmp_path / "host_migrations"
        (host / "versions").mkdir(parents=True)
        (host / "env.py").write_text(
            textwrap.dedent(
                """
                from alembic import context
                connection = context.config.attributes["connection"]
                context.configure(connection=connection, target_metadata=None)
                with context.begin_transaction():
                    context.run_migrations()
                """
            )
        )
        (host / "versions" / "h001_orders.py").write_text(
            textwrap.dedent(
                """
                import sqlalchemy as sa
                from alembic import op
                revision = "h001"
                down_revision = None
                branch_labels = ("host",)
                depends_on = None
                def upgrade():
                    op.create_table("host_orders", sa.Column("id", sa.Integer, primary_key=True))
                def downgrade():
                    op.drop_table("host_orders")
                """
            )
        )
        config = Config()
        config.set_main_option("script_location", str(host))
        config.set_main_option("path_separator", "os")
        config.set_main_option(
            "version_locations", f"{host / 'versions'}:{migrations.package_path()}"
        )
        with empty_engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "heads")
        assert {"host_orders", "daz_retry_queue", "alembic_version"} <= table_names(empty_engine)
        assert sorted(migrations.current(empty_engine, version_table="alembic_version")) == [
            "h001",
            HEAD,
        ]
