"""The stock ``alembic`` command: in a checkout, and in a host application (editable or wheel).

Every test here runs ``python -m alembic`` in a subprocess, as a user would type it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect

from retryqueue import create_engine, migrations
from tests.support.revisions import ALL, HEAD

ROOT = Path(__file__).resolve().parents[2]
BEFORE_HEAD = ALL[-2]


def run(
    python: str | Path, *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python *args`` in ``cwd`` without this process's database settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RETRYQUEUE_")}
    result = subprocess.run(
        [str(python), *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A clean copy of the repository's tracked (and new, not ignored) files."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an sdist, say): nothing to copy the way git sees it")
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    copy = tmp_path / "checkout"
    for name in listed:
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    return copy


class TestCheckout:
    """alembic.ini at the root: upgrade, history, check, autogenerate into the one folder."""

    def test_stock_alembic(self, checkout: Path) -> None:
        url = f"sqlite:///{checkout}/queue.db"
        env = {"RETRYQUEUE_DATABASE_URL": url, "PYTHONPATH": str(checkout)}
        alembic = ("-m", "alembic")
        upgraded = run(sys.executable, *alembic, "upgrade", "head", cwd=checkout, env=env)
        assert f"Running upgrade {BEFORE_HEAD} -> {HEAD}" in upgraded.stderr
        assert {"daz_retry_queue", "retryqueue_alembic_version"} <= tables(url)
        history = run(sys.executable, *alembic, "history", cwd=checkout, env=env).stdout
        assert all(revision in history for revision in ALL)
        check = run(sys.executable, *alembic, "check", cwd=checkout, env=env)
        assert "No new upgrade operations detected" in check.stdout
        # The same database through the library: one version table, one history.
        engine = create_engine(url)
        assert migrations.current(engine) == [HEAD]
        assert migrations.differences(engine) == []
        with engine.begin() as connection:  # something autogenerate must notice
            connection.exec_driver_sql("DROP INDEX idx_retry_queue_event_type")
        engine.dispose()
        run(
            sys.executable,
            *alembic,
            "revision",
            "--autogenerate",
            "--rev-id",
            "rq9999",
            "-m",
            "event type index",
            cwd=checkout,
            env=env,
        )
        versions = checkout / "retryqueue" / "migrations" / "versions"
        (made,) = versions.glob("rq9999_*.py")
        text = made.read_text()
        assert f'down_revision: str | None = "{HEAD}"' in text.replace("'", '"')
        assert "idx_retry_queue_event_type" in text and "create_index" in text
        assert not list((checkout / "alembic").glob("**/rq9999*"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from this tree."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), ROOT],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("retryqueue-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed (its dependencies borrowed from ours)."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # Our site-packages as a plain path: its .pth files (our editable install) are not read.
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel],
        check=True,
        capture_output=True,
    )
    return python


class TestWheel:
    """The wheel ships the one folder of revisions, and the library runs them from it."""

    def test_contents(self, wheel: Path) -> None:
        names = set(zipfile.ZipFile(wheel).namelist())
        shipped = {n for n in names if n.startswith("retryqueue/migrations/versions/rq")}
        assert {Path(n).name for n in shipped} == {
            p.name for p in migrations.package_path().glob("rq*.py")
        }
        assert not [n for n in names if n.endswith("env.py") or n.startswith("alembic/")]

    def test_library_from_the_wheel(self, wheel_python: Path, tmp_path: Path) -> None:
        script = textwrap.dedent(
            f"""
            import retryqueue
            from retryqueue import create_engine, migrations
            assert "site-packages" in retryqueue.__file__, retryqueue.__file__
            engine = create_engine("sqlite:///{tmp_path}/lib.db")
            print(",".join(migrations.upgrade(engine)))
            assert migrations.differences(engine) == []
            """
        )
        out = run(wheel_python, "-c", script, cwd=tmp_path).stdout
        assert out.strip() == ",".join(ALL)


HOST_MODELS = """
import sqlalchemy as sa

metadata = sa.MetaData()
orders = sa.Table(
    "host_orders",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("total", sa.Integer, nullable=False),
    {note}
)
"""

HOST_ENV = """
from alembic import context
from sqlalchemy import engine_from_config, pool

import retryqueue
from retryqueue.migrations import include_name, include_object
from host_models import metadata

config = context.config
engine = engine_from_config(config.get_section(config.config_ini_section), poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(
        connection=connection,
        # retryqueue.metadata may be added here too: the hooks keep its objects out.
        target_metadata=[metadata, retryqueue.metadata],
        include_name=include_name,
        include_object=include_object,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()
"""

HOST_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "h001"
down_revision = None
branch_labels = ("host",)
depends_on = None


def upgrade():
    op.create_table(
        "host_orders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("total", sa.Integer, nullable=False),
    )


def downgrade():
    op.drop_table("host_orders")
"""


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Path]:
    """A throwaway application with its own alembic environment, as docs/migrations.md says."""
    project = tmp_path / "host"
    (project / "migrations" / "versions").mkdir(parents=True)
    (project / "host_models.py").write_text(HOST_MODELS.format(note=""))
    (project / "migrations" / "env.py").write_text(HOST_ENV)
    template = Path(sysconfig.get_paths()["purelib"]) / "alembic/templates/generic"
    shutil.copy(template / "script.py.mako", project / "migrations" / "script.py.mako")
    (project / "migrations" / "versions" / "h001_orders.py").write_text(HOST_REVISION)
    (project / "alembic.ini").write_text(
        textwrap.dedent(
            f"""
            [alembic]
            script_location = %(here)s/migrations
            version_locations = %(here)s/migrations/versions retryqueue:migrations/versions
            path_separator = space
            prepend_sys_path = .
            sqlalchemy.url = sqlite:///{project}/host.db
            """
        )
    )
    return project


@pytest.mark.parametrize("install", ["editable", "wheel"])
class TestHostApplication:
    """The recipe with the stock alembic command, from an editable install and a wheel."""

    def test_recipe(self, host: Path, install: str, request: pytest.FixtureRequest) -> None:
        python = (
            sys.executable if install == "editable" else request.getfixturevalue("wheel_python")
        )
        url = f"sqlite:///{host}/host.db"

        def alembic(*args: str) -> subprocess.CompletedProcess[str]:
            return run(python, "-m", "alembic", *args, cwd=host)

        heads = alembic("heads").stdout
        assert "h001 (host) (head)" in heads and f"{HEAD} (retryqueue) (head)" in heads
        alembic("upgrade", "heads")
        assert {"host_orders", "daz_retry_queue", "daz_retry_circuits"} <= tables(url)
        history = alembic("history").stdout
        assert all(revision in history for revision in [*ALL, "h001"])
        alembic("downgrade", "retryqueue@-1")
        engine = create_engine(url)
        try:
            recorded = migrations.current(engine, version_table="alembic_version")
        finally:
            engine.dispose()
        assert sorted(recorded) == ["h001", ALL[-2]]
        alembic("upgrade", "heads")
        assert "No new upgrade operations detected" in alembic("check").stdout

        # A model change in the host: autogenerate on the host's branch sees only that.
        (host / "host_models.py").write_text(
            HOST_MODELS.format(note='sa.Column("note", sa.String(50)),')
        )
        alembic("revision", "--autogenerate", "-m", "note", "--head", "host@head")
        (made,) = list((host / "migrations" / "versions").glob("*note.py"))
        text = made.read_text()
        assert "batch_alter_table('host_orders'" in text.replace('"', "'")
        assert "add_column(sa.Column('note'" in text.replace('"', "'")
        assert "daz_retry" not in text and "retryqueue" not in text

        # retryqueue's CLI finds its revisions in the host's version table.
        cli = "from retryqueue.cli import main; main()"
        said = run(python, "-c", cli, "--database-url", url, "db", "current", cwd=host).stdout
        assert f"alembic_version holds {HEAD}" in said
        named = ("db", "current", "--version-table", "alembic_version")
        said = run(python, "-c", cli, "--database-url", url, *named, cwd=host).stdout
        assert said.strip() == f"{HEAD} (head)"
