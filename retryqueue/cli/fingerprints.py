"""``retryqueue refingerprint``: the stored items' error fingerprints, recomputed with the
normalisation rules in force (after a rule change, one failure is one group again)."""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from retryqueue.cli._context import (
    CliError,
    Progress,
    _first_line,
    import_from_cwd,
    print_json,
    state,
)
from retryqueue.cli.monitor import JsonOption

__all__ = ["load_rules", "refingerprint", "register"]


def register(app: typer.Typer) -> None:
    """Add this module's command to ``app``."""
    app.command()(refingerprint)


def load_rules(spec: str) -> None:
    """Import ``package.module`` (its import registers the rules with
    :func:`retryqueue.fingerprint.add_rule`) or call ``package.module:function`` (no
    arguments) once imported. Anything that goes wrong is one :class:`CliError` line."""
    module_name, colon, attribute = spec.strip().partition(":")
    if not module_name or (colon and not attribute):
        raise CliError(f"--rules {spec!r}: expected 'package.module' or 'package.module:function'")
    import_from_cwd()
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an application module may fail in any way at import
        problem = _first_line(exc)
        raise CliError(f"--rules {spec!r}: cannot import {module_name!r}: {problem}") from None
    if not attribute:
        return
    function = getattr(module, attribute, None)
    if not callable(function):
        raise CliError(f"--rules {spec!r}: {module_name!r} has no function {attribute!r}")
    try:
        function()
    except Exception as exc:  # the application's own code: its failure is reported, not raised
        raise CliError(f"--rules {spec!r}: {attribute}() failed: {_first_line(exc)}") from None


def refingerprint(
    ctx: typer.Context,
    rules: Annotated[
        str | None,
        typer.Option(
            help="The module that adds your normalisation rules when imported "
            "('myapp.errors'), or a function to call ('myapp.errors:setup'). Without it: "
            "the built-in rules only."
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Items per transaction.", min=1, max=100_000, show_default=True)
    ] = 500,
    as_json: JsonOption = False,
) -> None:
    """Recompute the error fingerprint of every item that carries an error.

    Run it after changing the normalisation rules (retryqueue.fingerprint.add_rule), with
    --rules naming where your application adds them, so that the dead letters of one
    failure form one group again (dead-letters --group-by fingerprint, the dashboard).
    Items a worker holds at that moment are left for the next run; history rows keep the
    fingerprint they were written with.
    """
    if rules is not None:
        load_rules(rules)
    current = state(ctx)
    read = changed = 0
    with current.session() as session, Progress("fingerprinting", None, quiet=as_json) as advance:
        for batch_read, batch_changed in current.queue().iter_refingerprint(
            session, batch_size=batch_size
        ):
            session.commit()
            read += batch_read
            changed += batch_changed
            advance(batch_read)
    if as_json:
        print_json({"items": read, "changed": changed})
    else:
        typer.echo(f"{changed} of {read} item(s) with an error got a new fingerprint")
