"""For applications that run retryqueue's revisions with their own alembic environment.

In the application's ``alembic.ini`` (read before any ``env.py``, so it is the place that
works with the stock ``alembic`` command)::

    version_locations = %(here)s/alembic/versions retryqueue:migrations/versions
    path_separator = space

``retryqueue:migrations/versions`` is alembic's ``package:path`` form: it finds the
revisions wherever retryqueue is installed (wheel, editable checkout, any virtualenv).
Code that builds its own :class:`alembic.config.Config` can use :func:`version_location`.

In the application's ``env.py``, pass :func:`include_name` and :func:`include_object` to
``context.configure`` so that autogenerate and ``alembic check`` leave retryqueue's objects
alone: its tables, their indexes, the monthly partitions, the event-key table of a
partitioned queue and retryqueue's standalone version table. Those belong to
retryqueue's revisions; :func:`retryqueue.migrations.differences` checks them.
"""

from __future__ import annotations

import re
from typing import Any

from retryqueue.migrations._partition_months import KEYS_TABLE, QUEUE
from retryqueue.migrations._runner import DEFAULT_VERSION_TABLE, package_path
from retryqueue.models import metadata

__all__ = [
    "VERSION_LOCATION",
    "include_name",
    "include_object",
    "is_retryqueue_table",
    "version_location",
]

VERSION_LOCATION = "retryqueue:migrations/versions"
"""The revisions' location in alembic's ``package:path`` form (for ``alembic.ini``)."""

_PARTITION = re.compile(rf"^{QUEUE}_(p\d{{4}}_\d{{2}}|default)$")


def version_location() -> str:
    """The revisions' folder as a path, for a Config built in code (any install)."""
    return str(package_path())


def is_retryqueue_table(name: str | None) -> bool:
    """True for a table retryqueue owns: its models' tables, partitions, event keys, version."""
    if name is None:
        return False
    return (
        name in metadata.tables
        or name in (KEYS_TABLE, DEFAULT_VERSION_TABLE)
        or _PARTITION.match(name) is not None
    )


def include_name(name: str | None, type_: str, parent_names: dict[str, Any]) -> bool:
    """alembic ``include_name`` hook: do not even reflect retryqueue's tables."""
    if type_ == "table":
        return not is_retryqueue_table(name)
    if type_ == "schema":
        return True
    return not is_retryqueue_table(parent_names.get("table_name"))


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """alembic ``include_object`` hook: leave retryqueue's tables and their objects out.

    Works whether or not ``retryqueue.metadata`` is part of the application's
    ``target_metadata``: neither a copy of retryqueue's tables (before its revisions ran)
    nor their removal (after) ends up in the application's revisions.
    """
    if type_ == "table":
        return not is_retryqueue_table(name)
    table = getattr(obj, "table", None)
    return not is_retryqueue_table(getattr(table, "name", None))
