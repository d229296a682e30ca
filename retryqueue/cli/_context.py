"""What every command shares: the database, injectable dependencies, errors and output."""

from __future__ import annotations

import getpass
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import typer
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session
from typer._click.exceptions import ClickException, UsageError  # typer vendors click
from typer._click.globals import get_current_context
from typer.core import TyperGroup

from retryqueue import validation as check
from retryqueue.cli._help import use_plain_help
from retryqueue.cli._output import (
    Progress,
    add_column,
    age,
    console,
    jsonable,
    new_table,
    print_json,
    print_table,
    set_wide,
    short,
    text,
    when,
    wide,
)
from retryqueue.clock import Clock
from retryqueue.engine import create_engine, normalise_url
from retryqueue.errors import DatabaseError, InvalidArgument, RetryQueueError
from retryqueue.queue import RetryQueue

__all__ = [  # the output helpers are re-exported: commands import everything from here
    "DATABASE_URL_ENV",
    "DEFAULT_DATABASE_URL",
    "CliDeps",
    "CliError",
    "ErrorHandlingGroup",
    "Progress",
    "State",
    "add_column",
    "age",
    "chunks",
    "console",
    "hoist_global_options",
    "import_from_cwd",
    "jsonable",
    "new_table",
    "parse_duration",
    "parse_json",
    "parse_when",
    "print_json",
    "print_table",
    "requested_by",
    "set_wide",
    "short",
    "state",
    "text",
    "when",
    "wide",
]

DEFAULT_DATABASE_URL = "sqlite:///retryqueue.db"
DATABASE_URL_ENV = "RETRYQUEUE_DATABASE_URL"
_MISSING_TABLE = re.compile(r"no such table|relation .* does not exist|UndefinedTable", re.I)


def _block_until_interrupted(url: str) -> None:
    threading.Event().wait()


@dataclass
class CliDeps:
    """Things tests replace: pass an instance as ``obj=`` to the CLI runner.

    ``sleep``/``monotonic`` drive the replay throttle; ``clock`` is the queue's clock;
    ``serve_until`` is called with the /metrics URL and returns when serving should stop.
    """

    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    clock: Clock | None = None
    serve_until: Callable[[str], None] = _block_until_interrupted


@dataclass
class State:
    """The per-invocation state: the database URL (parsed lazily) and the engine."""

    raw_url: str
    deps: CliDeps
    on_close: Callable[[Callable[[], Any]], Any]
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def url(self) -> URL:
        """The parsed, normalised database URL; :class:`CliError` if it does not parse."""
        try:
            return normalise_url(self.raw_url)
        except InvalidArgument as exc:
            raise CliError(f"invalid database URL: {exc.problem}") from None

    @property
    def display_url(self) -> str:
        """The URL with its password masked, for messages."""
        try:
            return self.url.render_as_string(hide_password=True)
        except CliError:
            return "<unparseable URL>"

    def engine(self) -> Engine:
        """The engine, created on first use and disposed when the command ends.

        A SQLite file that does not exist is an error, except for the commands that create
        a database (``db upgrade``, ``db stamp``, ``demo``): reading must not leave an
        empty file behind.
        """
        if self._engine is None:
            self.require_existing_database()
            try:
                self._engine = create_engine(self.url)
            except (ArgumentError, ImportError) as exc:
                raise CliError(f"invalid database URL: {_first_line(exc)}") from exc
            self.on_close(self._engine.dispose)
        return self._engine

    def require_existing_database(self) -> None:
        """:class:`CliError` if the URL names a SQLite file that does not exist (see engine)."""
        url = self.url
        path = url.database
        if url.get_backend_name() != "sqlite" or not path or path == ":memory:":
            return
        if path.startswith("file:") or Path(path).exists():
            return
        if _invoked_command()[:2] in (["db", "upgrade"], ["db", "stamp"], ["demo"]):
            return
        raise CliError(
            f"no database at {self.display_url} (the file {path} does not exist): "
            f"set --database-url or {DATABASE_URL_ENV}, or create it with `retryqueue db upgrade`"
        )

    def queue(self) -> RetryQueue:
        """A queue on the injected clock (default: the database's or host's clock)."""
        return RetryQueue(clock=self.deps.clock)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session for reading; nothing is committed."""
        with Session(self.engine()) as session:
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session inside a transaction committed at the end of the block."""
        with Session(self.engine()) as session, session.begin():
            yield session

    def scrub(self, message: str) -> str:
        """``message`` without the URL's password, should a driver have echoed it."""
        try:
            password = self.url.password
        except CliError:
            return message
        if password:
            message = message.replace(str(password), "***")
        return message


def _invoked_command() -> list[str]:
    """The running command's names below the root, e.g. ``["db", "upgrade"]``."""
    names: list[str] = []
    ctx = get_current_context(silent=True)
    while ctx is not None and ctx.parent is not None:
        names.insert(0, ctx.info_name or "")
        ctx = ctx.parent
    return names


class CliError(Exception):
    """A failure reported as one line on stderr with a non-zero exit."""


def state(ctx: typer.Context) -> State:
    """The :class:`State` set up by the root callback."""
    found = ctx.find_object(State)
    if found is None:  # pragma: no cover - the root callback always sets it
        raise CliError("internal error: no CLI state")
    return found


def import_from_cwd() -> None:
    """Let the application's modules be imported from the current folder, as ``python -m``
    would (console scripts don't)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def requested_by() -> str:
    """Who is operating, for the history rows replays write."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


#: Options of the root command, accepted before or after the subcommand; True: takes a value.
GLOBAL_OPTIONS: dict[str, bool] = {"--database-url": True, "--wide": False}


def hoist_global_options(args: Sequence[str]) -> list[str]:
    """``args`` with the global options moved before the subcommand.

    ``retryqueue worker app:router --database-url URL`` then means what
    ``retryqueue --database-url URL worker app:router`` means. Nothing after ``--`` moves.
    """
    hoisted: list[str] = []
    rest: list[str] = []
    position = 0
    while position < len(args):
        arg = args[position]
        if arg == "--":
            rest.extend(args[position:])
            break
        name = arg.split("=", 1)[0]
        takes_value = GLOBAL_OPTIONS.get(name)
        if takes_value is None:
            rest.append(arg)
        elif takes_value and "=" not in arg and position + 1 < len(args):
            hoisted.extend(args[position : position + 2])
            position += 1
        else:
            hoisted.append(arg)
        position += 1
    return hoisted + rest


class ErrorHandlingGroup(TyperGroup):
    """The root group: turns expected failures into one line on stderr and exit code 1.

    Usage errors (unknown option, missing argument, bad value) are reported the same way,
    as one ``error:`` line naming the command and its ``--help``, with exit code 1.
    """

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Parse ``args`` (global options anywhere) and run; usage errors are one line."""
        argv = hoist_global_options(sys.argv[1:] if args is None else list(args))
        use_plain_help(self)
        try:
            result = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except UsageError as exc:
            if not standalone_mode:
                raise
            command = exc.ctx.command_path if exc.ctx is not None else "retryqueue"
            message = " ".join(exc.format_message().split())
            typer.echo(f"error: {message} (see '{command} --help')", err=True)
            sys.exit(1)
        except ClickException as exc:
            if not standalone_mode:
                raise
            typer.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            if not standalone_mode:
                raise
            typer.echo("aborted: nothing was changed", err=True)
            sys.exit(1)
        if not standalone_mode:
            return result
        sys.exit(result if isinstance(result, int) else 0)

    def invoke(self, ctx: Any) -> Any:  # typer's (vendored) click Context
        """Run the command; report library, database and argument errors without a traceback."""
        try:
            return super().invoke(ctx)
        except CliError as exc:
            _fail(ctx, str(exc))
        except InvalidArgument as exc:
            _fail(ctx, f"invalid argument {exc}")
        except RetryQueueError as exc:
            _fail(ctx, _explain(str(exc)), with_url=isinstance(exc, DatabaseError))
        except SQLAlchemyError as exc:
            _fail(ctx, _explain(f"database error: {_first_line(exc)}"), with_url=True)


def _explain(message: str) -> str:
    if _MISSING_TABLE.search(message):
        return f"{message} (the queue's tables are missing: run `retryqueue db upgrade`)"
    return message


def _fail(ctx: Any, message: str, *, with_url: bool = False) -> NoReturn:
    found = ctx.find_object(State)
    if found is not None:
        if with_url:
            message = f"{message} [database {found.display_url}]"
        message = found.scrub(message)
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _first_line(exc: BaseException) -> str:
    origin = getattr(exc, "orig", None)
    text = str(origin if origin is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- parsing --------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str, name: str) -> float:
    """Seconds from ``90``, ``45s``, ``30m``, ``1h``, ``1h30m``, ``7d`` or ``2w``."""
    cleaned = value.strip().lower()
    try:
        seconds = float(cleaned)
    except ValueError:
        parts = _DURATION_PART.findall(cleaned)
        if not parts or "".join(number + unit for number, unit in parts) != cleaned:
            raise CliError(
                f"invalid {name} {value!r}: expected a duration like 90s, 30m, 1h, 7d"
            ) from None
        seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
    return check.seconds(name, seconds)  # finite, >= 0, at most 10 years


def parse_when(value: str | None, name: str) -> datetime | None:
    """An aware datetime from ISO 8601 (naive means UTC) or a duration ago (``24h``)."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            seconds = parse_duration(value, name)
        except CliError:
            raise CliError(
                f"invalid {name} {value!r}: expected an ISO 8601 time or a duration ago (24h)"
            ) from None
        return datetime.now(UTC) - timedelta(seconds=seconds)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def parse_json(value: str, name: str) -> Any:
    """A JSON document, or :class:`CliError` naming the option."""
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise CliError(f"invalid JSON for {name}: {exc}") from exc


def chunks(values: Sequence[int], size: int) -> Iterator[list[int]]:
    """``values`` in consecutive lists of at most ``size``."""
    for start in range(0, len(values), size):
        yield list(values[start : start + size])
