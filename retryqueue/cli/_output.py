"""What commands print: tables fitted to the terminal, JSON, cells, and progress bars.

Tables fit the terminal (or COLUMNS when piped): the columns that matter keep their width,
long text wraps. ``--wide`` and piped output without COLUMNS keep every column at its
natural width (piped: plain aligned text).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table

__all__ = [
    "Progress",
    "add_column",
    "age",
    "console",
    "fit",
    "jsonable",
    "new_table",
    "print_json",
    "print_table",
    "set_wide",
    "short",
    "text",
    "when",
    "wide",
]


_WIDE: ContextVar[bool] = ContextVar("retryqueue_cli_wide", default=False)
_PLAIN_WIDTH = 10_000  # piped without COLUMNS: never truncate, never wrap


def set_wide(wide: bool) -> None:
    """Record the root ``--wide`` option for this invocation."""
    _WIDE.set(wide)


def wide() -> bool:
    """Whether ``--wide`` was given: every column, full timestamps, no width limit."""
    return _WIDE.get()


def _width(stream: Any) -> int | None:
    """None (rich decides: the terminal's width or COLUMNS) or the plain-text width."""
    if wide():
        return _PLAIN_WIDTH
    if stream.isatty() or os.environ.get("COLUMNS", "").strip().isdigit():
        return None
    return _PLAIN_WIDTH


def console(*, stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr) as wide as the terminal, or COLUMNS when piped.

    Piped output without COLUMNS (and ``--wide``) has no width limit: nothing is cut.
    """
    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, highlight=False, width=_width(stream), soft_wrap=False)


def print_table(table: Table, out: Console | None = None) -> None:
    """Print ``table`` on ``out`` (default: stdout), fitted to the width (see :func:`fit`).

    With ``--wide``, or piped without COLUMNS, columns keep their natural widths (piped:
    plain aligned text without rules).
    """
    out = out or console()
    if out.width == _PLAIN_WIDTH:
        if not out.is_terminal:
            table.box = None
    else:
        fit(table, out.width)
    out.print(table)


_WORD_CAP = 16  # a longer word (a URL, a token) folds rather than widen its column
_GAP = 2  # a column's right padding and the separator
_NARROWEST = 6


def fit(table: Table, width: int) -> None:
    """Share ``width`` between the columns.

    Kept (no-wrap) columns get their natural width; the others at least their longest word
    (up to 16 characters) or their ``min_width``, and the rest of the room in proportion to
    what each would need to show everything on one line.
    """
    natural = [_natural(column) for column in table.columns]
    flexible = [i for i, column in enumerate(table.columns) if not column.no_wrap]
    gaps = _GAP * (len(natural) - 1)
    if gaps + sum(natural) <= width or not flexible:
        return
    fixed = sum(natural[i] for i in range(len(natural)) if i not in flexible)
    floors = {
        i: min(natural[i], max(table.columns[i].min_width or 0, _longest_word(table.columns[i])))
        for i in flexible
    }
    room = width - gaps - fixed
    while sum(floors.values()) > room and max(floors.values()) > _NARROWEST:
        widest = max(floors, key=lambda i: floors[i])  # too tight: the widest floor gives
        floors[widest] -= 1
    extra = max(0, room - sum(floors.values()))
    wants = {i: natural[i] - floors[i] for i in flexible}
    total_want = sum(wants.values()) or 1
    for i in flexible:
        table.columns[i].width = min(natural[i], floors[i] + extra * wants[i] // total_want)


def _natural(column: Any) -> int:
    texts = [str(column.header), *(str(cell) for cell in column.cells)]
    return max((len(line) for value in texts for line in value.splitlines()), default=1)


def _longest_word(column: Any) -> int:
    texts = [str(column.header), *(str(cell) for cell in column.cells)]
    words = [len(word) for value in texts for word in value.split()]
    return min(max(words, default=1), _WORD_CAP)


def new_table(title: str, **kwargs: Any) -> Table:
    """A table: a title line, a ruled header, then columns made by :func:`add_column`.

    No outer box and two spaces between columns, so that the columns that matter fit in
    80 columns.
    """
    options: dict[str, Any] = {
        "box": box.SIMPLE_HEAD,
        "show_edge": False,
        "pad_edge": False,
        "padding": (0, 1, 0, 0),
        "title_justify": "left",
    }
    return Table(title=title, **{**options, **kwargs})


def add_column(
    table: Table, name: str, *, keep: bool = False, right: bool = False, min_width: int = 0
) -> None:
    """A column; ``keep``: never wrapped (ids, statuses, times), else long text wraps.

    ``min_width``: wrap no narrower than this (an event type stays readable).
    """
    table.add_column(
        name,
        justify="right" if right else "left",
        no_wrap=keep,
        overflow="ellipsis" if keep else "fold",
        min_width=min_width or None,
    )


class Progress:
    """A progress bar with ETA on stderr, drawn only on a terminal and never with ``--json``.

    ``with Progress("purging", total) as advance: advance(n)``; ``total=None`` shows a
    counter and the elapsed time (no ETA can be known). :meth:`timed` draws a bar over an
    estimated duration for one long statement.
    """

    def __init__(self, label: str, total: int | None, *, quiet: bool = False) -> None:
        err = console(stderr=True)
        self.enabled = not quiet and err.is_terminal
        self._bar = RichProgress(
            SpinnerColumn(),
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn() if total is not None else TextColumn("{task.completed}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err,
            transient=True,
            disable=not self.enabled,
        )
        self._task = self._bar.add_task(label, total=total)

    def __enter__(self) -> Callable[[int], None]:
        self._bar.__enter__()
        return lambda count: self._bar.advance(self._task, count)

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(None, None, None)

    @classmethod
    @contextmanager
    def timed(cls, label: str, estimate_seconds: float, *, quiet: bool = False) -> Iterator[None]:
        """A bar that fills over ``estimate_seconds`` (stopping short) while the block runs."""
        bar = cls(label, max(1, int(estimate_seconds * 10)), quiet=quiet)
        done = threading.Event()
        started = time.monotonic()

        def tick() -> None:
            total = bar._bar.tasks[0].total or 1
            while not done.wait(0.2):
                elapsed = (time.monotonic() - started) * 10
                bar._bar.update(bar._task, completed=min(elapsed, total * 0.99))

        with bar:
            ticker = threading.Thread(target=tick, daemon=True) if bar.enabled else None
            if ticker is not None:
                ticker.start()
            try:
                yield
            finally:
                done.set()
                if ticker is not None:
                    ticker.join()


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


def when(value: datetime | None) -> str:
    """A time for a table: ``MM-DD HH:MM`` UTC (full seconds and year with ``--wide``)."""
    if value is None or wide():
        return text(value)
    return value.astimezone(UTC).strftime("%m-%d %H:%M")


def age(value: datetime | None, now: datetime) -> str:
    """How long ago ``value`` was, in the largest sensible unit: ``45s``, ``12m``, ``3h5m``."""
    if value is None:
        return "-"
    seconds = max(0, int((now - value).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def short(message: str | None, limit: int = 200) -> str:
    """The first line of ``message``, at most ``limit`` characters ('-' when empty)."""
    if not message:
        return "-"
    line = message.splitlines()[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"
