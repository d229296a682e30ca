"""The declarative base every table of retryqueue is mapped on, and what the tables share.

:data:`metadata` carries its own naming convention so that constraint and index names
match the shipped migrations exactly; :func:`identifier`, :data:`BIG_ID` and
:data:`NEVER_REUSE_IDS` are the column types and table options that the two main tables
(:mod:`retryqueue.models`) and the side tables (:mod:`retryqueue._side_tables`) have in
common. Import the public names from :mod:`retryqueue.models`.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, MetaData, String
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase

__all__ = [
    "BIG_ID",
    "BINARY_COLLATION",
    "NAMING_CONVENTION",
    "NEVER_REUSE_IDS",
    "Base",
    "identifier",
    "metadata",
]

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata: MetaData = MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only autoincrements an INTEGER PRIMARY KEY; elsewhere this is BIGSERIAL/BIGINT.
BIG_ID: BigInteger = BigInteger().with_variant(Integer(), "sqlite")
# Without AUTOINCREMENT, SQLite hands a deleted row's id to the next insert, and history
# rows of a cleaned-up item would then describe a new one. Ids are never reused.
NEVER_REUSE_IDS: dict[str, bool] = {"sqlite_autoincrement": True}

# Identifiers compared in SQL (keys, names, worker ids) compare exactly on every backend:
# MySQL/MariaDB would otherwise use the database's collation, by default case- and
# accent-insensitive (utf8mb4_general_ci), so that "Pay" = "pay" (revision rq0007).
BINARY_COLLATION: str = "utf8mb4_bin"


def identifier(length: int) -> String:
    """A ``VARCHAR(length)`` that compares exactly (binary collation on MySQL/MariaDB)."""
    variant = mysql.VARCHAR(length, charset="utf8mb4", collation=BINARY_COLLATION)
    return String(length).with_variant(variant, "mysql", "mariadb")


class Base(DeclarativeBase):
    """Declarative base of retryqueue's models, bound to :data:`metadata`."""

    metadata = metadata
