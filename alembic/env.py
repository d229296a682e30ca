"""The alembic environment of the repository: the stock ``alembic`` command in a checkout.

``alembic.ini`` (next to this folder) points at the one folder of revisions,
``retryqueue/migrations/versions``, the same files the wheel ships and
:mod:`retryqueue.migrations` runs. The database URL is read as the ``retryqueue`` CLI
reads it: ``RETRYQUEUE_DATABASE_URL``, else ``sqlalchemy.url`` in ``alembic.ini``, else
``sqlite:///retryqueue.db``. Autogenerate compares the models (``retryqueue.metadata``).
Applications with their own alembic do not use this file (see docs/migrations.md).
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

from retryqueue.engine import normalise_url
from retryqueue.migrations import VERSION_TABLE, context_options, is_partitioned

config = context.config
if config.config_file_name is not None:  # alembic's own progress lines
    fileConfig(config.config_file_name, disable_existing_loggers=False)
version_table = config.get_main_option("version_table") or VERSION_TABLE
url = (
    os.environ.get("RETRYQUEUE_DATABASE_URL")
    or config.get_main_option("sqlalchemy.url")
    or "sqlite:///retryqueue.db"
)

if context.is_offline_mode():
    engine_url = normalise_url(url)
    context.configure(
        url=engine_url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **context_options(engine_url.get_backend_name(), version_table),
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(normalise_url(url), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            **context_options(
                connection.dialect.name, version_table, partitioned=is_partitioned(connection)
            ),
        )
        with context.begin_transaction():
            context.run_migrations()
