"""What every command shares: the database, injectable dependencies, errors and output."""

from __future__ import annotations

import dataclasses
import enum
import getpass
import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import typer
from rich.console import Console
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session
from typer.core import TyperGroup

from retryqueue import validation as check
from retryqueue.clock import Clock
from retryqueue.engine import create_engine, normalise_url
from retryqueue.errors import DatabaseError, InvalidArgument, RetryQueueError
from retryqueue.queue import RetryQueue

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
        """The engine, created on first use and disposed when the command ends."""
        if self._engine is None:
            try:
                self._engine = create_engine(self.url)
            except (ArgumentError, ImportError) as exc:
                raise CliError(f"invalid database URL: {_first_line(exc)}") from exc
            self.on_close(self._engine.dispose)
        return self._engine

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


class CliError(Exception):
    """A failure reported as one line on stderr with a non-zero exit."""


def state(ctx: typer.Context) -> State:
    """The :class:`State` set up by the root callback."""
    found = ctx.find_object(State)
    if found is None:  # pragma: no cover - the root callback always sets it
        raise CliError("internal error: no CLI state")
    return found


def requested_by() -> str:
    """Who is operating, for the history rows replays write."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


class ErrorHandlingGroup(TyperGroup):
    """The root group: turns expected failures into one line on stderr and exit code 1."""

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


# -- output ---------------------------------------------------------------------------------


def console(*, stderr: bool = False) -> Console:
    """A rich console on the current stdout (or stderr); wide when not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 200
    return Console(file=stream, highlight=False, width=width, soft_wrap=False)


def jsonable(value: Any) -> Any:
    """Dataclasses, datetimes, UUIDs, enums and read-only mappings as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON on stdout."""
    typer.echo(json.dumps(jsonable(value), indent=2))


def text(value: Any) -> str:
    """A table cell: '-' for None, ISO seconds for datetimes, values of enums."""
    if value is None:
        return "-"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


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
