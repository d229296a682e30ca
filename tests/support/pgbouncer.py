"""PgBouncer in transaction-pooling mode in front of the test PostgreSQL.

The suite starts its own ``pgbouncer`` (Debian's package; ``.ci/run`` installs it) on a
free port of 127.0.0.1, with a configuration generated in a temporary directory, and stops
it at the end: a system PgBouncer service, if one runs, is never used. Clients are trusted
(the listener is local); PgBouncer logs in to PostgreSQL as the client's user, with the
password of the server URL if it has one.

PgBouncer refuses to run as root. Under root the process drops to the owner of the
PostgreSQL socket directory (the embedded server's own system user, who alone may enter
it) or to ``nobody`` for a TCP server, before it executes. On Linux it also gets SIGTERM
when the test process dies, so it never outlives the run.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from sqlalchemy.engine import URL

SKIP_REASON = (
    "pgbouncer not installed: `apt-get install pgbouncer` (.ci/run does it) "
    "or set RETRYQUEUE_TEST_PGBOUNCER to the binary"
)
BINARY_ENV = "RETRYQUEUE_TEST_PGBOUNCER"
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1


def find_pgbouncer() -> str | None:
    """The pgbouncer binary: $RETRYQUEUE_TEST_PGBOUNCER, PATH, or Debian's /usr/sbin."""
    configured = os.environ.get(BINARY_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")


def pgbouncer_version(binary: str) -> str:
    """``PgBouncer 1.18.0``: the first line of ``pgbouncer --version``."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0].strip()


@dataclass
class PgBouncer:
    """A running PgBouncer process of this test run."""

    process: subprocess.Popen[bytes]
    port: int
    directory: Path
    version: str
    pool_size: int

    def url(self, database_url: URL) -> URL:
        """``database_url`` (a database on the test server) reached through this PgBouncer."""
        query = {key: value for key, value in database_url.query.items() if key != "host"}
        return database_url.set(host="127.0.0.1", port=self.port, query=query)

    def log(self) -> str:
        """What PgBouncer logged so far."""
        path = self.directory / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM (immediate shutdown), SIGKILL if it lingers; remove the directory."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_pgbouncer(binary: str, server_url: URL, *, pool_size: int = 4) -> PgBouncer:
    """Start PgBouncer (transaction pooling, ``pool_size`` server connections per database)."""
    directory = Path(tempfile.mkdtemp(prefix="retryqueue-pgbouncer-"))
    directory.chmod(0o755)  # read by the unprivileged user PgBouncer runs as
    host, port = _server_address(server_url)
    listen_port = _free_port()
    config = directory / "pgbouncer.ini"
    _write(directory / "userlist.txt", _userlist(server_url))
    _write(config, _config(host, port, listen_port, directory, pool_size, server_url))
    user = _run_as(host)
    with open(directory / "pgbouncer.log", "ab") as log:
        process = subprocess.Popen(
            [binary, str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            preexec_fn=lambda: _become(user),
        )
    bouncer = PgBouncer(process, listen_port, directory, pgbouncer_version(binary), pool_size)
    try:
        _wait_until_accepting(bouncer, server_url)
    except BaseException:
        bouncer.stop()
        raise
    return bouncer


def _server_address(url: URL) -> tuple[str, int]:
    """Where PgBouncer finds the server: a TCP host, or the socket directory of the URL."""
    socket_dir = url.query.get("host")
    host = url.host or (socket_dir if isinstance(socket_dir, str) else None) or "127.0.0.1"
    return host, url.port or 5432


def _userlist(url: URL) -> str:
    user = url.username or "postgres"
    return f'"{user}" "{url.password or ""}"\n'


def _config(
    host: str, port: int, listen_port: int, directory: Path, pool_size: int, url: URL
) -> str:
    return f"""\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {directory / "userlist.txt"}
admin_users = {url.username or "postgres"}
pool_mode = transaction
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits,options
server_login_retry = 1
"""


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o644)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run_as(host: str) -> pwd.struct_passwd | None:
    """Whom PgBouncer runs as under root: the socket directory's owner, else nobody."""
    if os.geteuid() != 0:
        return None
    if host.startswith("/"):
        return pwd.getpwuid(os.stat(host).st_uid)
    return pwd.getpwnam("nobody")


def _become(user: pwd.struct_passwd | None) -> None:
    """In the child, before exec: drop root, then ask for SIGTERM when the parent dies."""
    if user is not None:
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)  # cleared by setuid: so after it


def _wait_until_accepting(bouncer: PgBouncer, server_url: URL) -> None:
    dsn = bouncer.url(server_url).set(drivername="postgresql")
    conninfo = dsn.render_as_string(hide_password=False)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if bouncer.process.poll() is not None:
            raise RuntimeError(
                f"pgbouncer exited with {bouncer.process.returncode}:\n{bouncer.log()[-3000:]}"
            )
        try:
            with psycopg.connect(conninfo, connect_timeout=2, autocommit=True) as connection:
                connection.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
