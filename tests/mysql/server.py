"""A MySQL/MariaDB server given by RETRYQUEUE_TEST_MYSQL_URL: throwaway databases on it."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import URL

from retryqueue import create_engine
from retryqueue.engine import normalise_url

MYSQL_URL_ENV = "RETRYQUEUE_TEST_MYSQL_URL"
SKIP_REASON = (
    f"MySQL/MariaDB tests need {MYSQL_URL_ENV} (e.g. mysql+pymysql://root@127.0.0.1:3306/test)"
)


@dataclass(frozen=True)
class MysqlServer:
    """The server of ``RETRYQUEUE_TEST_MYSQL_URL``; its database part is not used."""

    url: URL

    @classmethod
    def from_environment(cls) -> MysqlServer | None:
        """The configured server, or None when the variable is unset."""
        raw = os.environ.get(MYSQL_URL_ENV, "").strip()
        return cls(normalise_url(raw)) if raw else None

    def _admin(self, sql: str) -> str:
        engine = create_engine(self.url.set(database=None))
        try:
            with engine.begin() as connection:
                result = connection.execute(text(sql))
                return str(result.scalar()) if result.returns_rows else ""
        finally:
            engine.dispose()

    def version(self) -> str:
        """The server's version string (says MariaDB when it is)."""
        return self._admin("SELECT VERSION()")

    def create_database(self, prefix: str = "rq_test") -> URL:
        """A new empty database (utf8mb4, the server's default collation, as a real
        deployment has it: usually case-insensitive utf8mb4_general_ci); returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self._admin(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        return self.url.set(database=name)

    def drop_database(self, url: URL) -> None:
        """Drop a database made by :meth:`create_database`."""
        self._admin(f"DROP DATABASE IF EXISTS {url.database}")
