"""Hot statements in the driver's own terms: compiled once per dialect, their SQL text and
their parameters as the DB-API driver takes them.

SQLAlchemy's execution of a cached statement still costs, per call, a cache lookup, the
parameters' processing, an execution context and a result wrapper built from the cursor's
description: about 100 µs on psycopg for a flush of ten items, a sixth of the worker's CPU
time per batch. The worker's steady-state flush sends the very same text through the
session's own DB-API connection instead (psycopg, sync or async, and asyncpg; see
``queue._support._hot_rows``); everything else goes through SQLAlchemy.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["DriverForm", "driver_form"]


@dataclass(frozen=True, slots=True)
class DriverForm:
    """A statement compiled for one dialect and one set of values rendered into its text
    (SQLAlchemy's "post-compile" parameters, such as a LIMIT): the text, the statement's
    own bound values already processed (its literals: statuses, NULLs), and the
    processors of the caller's parameters."""

    text: str
    constants: Mapping[str, Any]
    processors: Mapping[str, Callable[[Any], Any]]
    rendered: frozenset[str]
    order: tuple[str, ...] | None  # a positional paramstyle's order of the names ($1, $2…)

    def parameters(self, params: Mapping[str, Any]) -> dict[str, Any] | tuple[Any, ...]:
        """The driver's parameters for ``params`` (the statement's named values): by name,
        or in order for a positional paramstyle (asyncpg's ``$1``)."""
        values = dict(self.constants)
        for name, value in params.items():
            if name in self.rendered:
                continue
            process = self.processors.get(name)
            values[name] = value if process is None else process(value)
        if self.order is None:
            return values
        return tuple(values[name] for name in self.order)


def driver_form(
    stmt: ClauseElement, dialect: Dialect, params: Mapping[str, Any]
) -> tuple[str, dict[str, Any] | tuple[Any, ...]]:
    """The SQL text and driver parameters of ``stmt`` with ``params`` on ``dialect``: what
    SQLAlchemy would send, compiled once per statement, dialect and rendered values.

    Only for statements whose parameters are all named in ``params`` or bound in the
    statement itself (no expanding IN lists: their text depends on each call's values).
    """
    compiled = _compiled(stmt, dialect)
    rendered = tuple((name, params[name]) for name in _rendered_names(compiled))
    key = (stmt, dialect, rendered, frozenset(params))
    form = _FORMS.get(key)
    if form is None:
        form = _form(compiled, params, frozenset(name for name, _ in rendered))
        with _FORMS_LOCK:  # a worker's drivers are threads
            _FORMS[key] = form
            if len(_FORMS) > _MAX_FORMS:  # a bound, not an eviction policy: forms are few
                del _FORMS[next(iter(_FORMS))]
    return form.text, form.parameters(params)


_MAX_FORMS = 256
_FORMS_LOCK = threading.Lock()
_FORMS: dict[tuple[ClauseElement, Dialect, tuple[tuple[str, Any], ...], frozenset[str]], DriverForm]
_FORMS = {}


@functools.lru_cache(maxsize=64)
def _compiled(stmt: ClauseElement, dialect: Dialect) -> SQLCompiler:
    compiled = stmt.compile(dialect=dialect)
    if not isinstance(compiled, SQLCompiler):
        raise TypeError("only SQL statements have a driver form")
    return compiled


@functools.lru_cache(maxsize=64)
def _rendered_names(compiled: SQLCompiler) -> tuple[str, ...]:
    return tuple(sorted(bind.key for bind in compiled.literal_execute_params))


def _form(compiled: SQLCompiler, params: Mapping[str, Any], rendered: frozenset[str]) -> DriverForm:
    expanded = compiled.construct_expanded_state(dict(params))
    if expanded.parameter_expansion:
        raise ValueError("a statement with expanding parameters has no single driver form")
    dialect = compiled.dialect
    processors = {  # what SQLAlchemy applies to each value before it reaches the driver
        name: process
        for name, bind in compiled.binds.items()
        if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
    }
    constants = {
        name: processors[name](value) if name in processors else value
        for name, value in expanded.parameters.items()
        if name not in params
    }
    order = tuple(expanded.positiontup) if expanded.positiontup is not None else None
    return DriverForm(expanded.statement, constants, processors, rendered, order)
