"""Help text in the words of the command line, not of Python's type annotations.

Typer describes options as ``--id <list[int]>`` and arguments as ``{event_type}``; the help
says ``--id INTEGER`` and ``EVENT_TYPE`` instead.
"""

from __future__ import annotations

import re
from typing import Any

from typer._click.core import Context  # typer vendors click

__all__ = ["PlainHelpContext", "plain_help", "use_plain_help"]

_TYPE_NAMES = {
    "str": "TEXT",
    "int": "INTEGER",
    "float": "NUMBER",
    "int range": "INTEGER",
    "float range": "NUMBER",
    "bool": "BOOLEAN",
}
_LIST = re.compile(r"<list\[([^\]<>]+)\]>")
_TYPE = re.compile(r"<([a-z_| ]+)>")
_ARGUMENT_ROW = re.compile(r"^(  )(\w+) <[^>]+>", re.MULTILINE)
_REQUIRED = re.compile(r"\{(\w+)\}")
_OPTIONAL = re.compile(r"\[(?!OPTIONS\])(\w+)\]")


def _type_name(match: re.Match[str]) -> str:
    name = match.group(1)
    if "|" in name:
        return f"[{name}]"
    return _TYPE_NAMES.get(name, name.upper())


def _argument_row(match: re.Match[str]) -> str:
    whole = match.group(0)
    return (match.group(1) + match.group(2).upper()).ljust(len(whole))


def plain_help(text: str) -> str:
    """``text`` with typer's type annotations replaced by metavars (``TEXT``, ``INTEGER``)."""
    lines = text.split("\n")
    usage = [i for i, line in enumerate(lines) if line.startswith("Usage:")]
    for index in usage:
        lines[index] = _REQUIRED.sub(lambda m: m.group(1).upper(), lines[index])
        lines[index] = _OPTIONAL.sub(lambda m: f"[{m.group(1).upper()}]", lines[index])
    text = "\n".join(lines)
    text = _ARGUMENT_ROW.sub(_argument_row, text)
    text = _LIST.sub(r"<\1>", text)
    return _TYPE.sub(_type_name, text)


class PlainHelpContext(Context):
    """A context whose help text goes through :func:`plain_help`."""

    def get_help(self) -> str:
        """The command's help, in command-line words."""
        return plain_help(super().get_help())


def use_plain_help(command: Any) -> None:
    """Give ``command`` and every subcommand below it :class:`PlainHelpContext`."""
    command.context_class = PlainHelpContext
    for child in getattr(command, "commands", {}).values():
        use_plain_help(child)
