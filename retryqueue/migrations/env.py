"""Alembic environment for retryqueue's revisions.

Used by :mod:`retryqueue.migrations` (which passes an open connection) and by the
``alembic`` command with the top-level ``alembic.ini`` (which gives a URL). Host
applications with their own alembic setup don't use this file: they add
``retryqueue:migrations/versions`` to their ``version_locations`` instead.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from retryqueue.engine import normalise_url
from retryqueue.models import metadata

config = context.config
VERSION_TABLE = config.get_main_option("version_table") or "retryqueue_alembic_version"


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_offline() -> None:
    """Emit SQL to stdout instead of running it (``retryqueue db sql``)."""
    url = config.get_main_option("sqlalchemy.url")
    context.configure(
        url=str(normalise_url(url)) if url else None,
        dialect_name=config.get_main_option("dialect_name") or None,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    """Run the revisions on a live connection."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url in alembic.ini or pass a connection")
    engine = create_engine(normalise_url(url), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
