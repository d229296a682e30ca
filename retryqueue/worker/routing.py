"""Which handler runs an item, and the route's retry settings.

A :class:`Router` maps event types to handlers: exact names (``payment.capture``),
prefix patterns (``payment.*`` matches ``payment.capture`` and ``payment.card.refund``, not
``payment`` itself) and the catch-all ``*``, optionally narrowed to one ``plugin_name``.
The most specific route wins: a route bound to the item's plugin before a route for any
plugin; then an exact name before a pattern; then the longest pattern.

Handlers are plain callables taking a :class:`~retryqueue.worker.Job`; their return value
is ignored. They signal outcomes by raising: :class:`PermanentError` (give up now),
:class:`RetryLater` (come back after a given delay), anything else (retried with backoff,
unless the route's ``retry_on`` excludes it). What a failed attempt records is planned in
:mod:`retryqueue.worker.failures`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from retryqueue import validation as check
from retryqueue.errors import InvalidArgument
from retryqueue.limits import MAX_PAUSE_SECONDS
from retryqueue.policy import RetryPolicy

__all__ = [
    "Handler",
    "PermanentError",
    "RetryLater",
    "Route",
    "RoutePolicy",
    "Router",
    "as_router",
    "load_router",
]

Handler = Callable[[Any], object]
"""A handler: called with a :class:`~retryqueue.worker.Job`; the return value is ignored."""


class PermanentError(Exception):
    """Raise from a handler when retrying cannot help: the item is marked ``failed`` at once.

    ``code`` becomes the item's error code (default: the exception's class name).
    """

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class RetryLater(Exception):
    """Raise from a handler to retry after ``delay`` (seconds or a timedelta; ``after`` is
    the same, by keyword).

    For answers like HTTP 429/503 with Retry-After. The attempt still counts toward
    max_retries: an item that is told to come back forever ends in dead_letter. A delay
    that is negative, NaN, infinite or longer than 10 years raises
    :class:`~retryqueue.errors.InvalidArgument` (a ValueError); raised from a handler, that
    is recorded as the item's failure (retried with backoff) like any other exception.

    ``pause_key=True``: the destination is saturated, not this item: the item's whole key
    is paused for ``delay`` for every worker (see :mod:`retryqueue.limits`; the key is the
    item's plugin_name, or ``plugin_name:event_type`` under a worker whose breaker is
    per event type; a string names the key), and this attempt is **not** counted: the item
    waits for the pause's end with its retry count and backoff unchanged (history status
    ``paused``). The delay must then be > 0 and at most
    :data:`~retryqueue.limits.MAX_PAUSE_SECONDS`. An item without a plugin has no key: it
    is retried after the delay as without ``pause_key``.
    """

    def __init__(
        self,
        delay: float | timedelta | None = None,
        message: str = "",
        *,
        code: str | None = None,
        after: float | timedelta | None = None,
        pause_key: bool | str = False,
    ) -> None:
        if (delay is None) == (after is None):
            raise InvalidArgument("RetryLater delay", "give the delay once (delay or after=)")
        wait = delay if delay is not None else after
        if pause_key is not False:
            if not isinstance(pause_key, bool | str) or (
                isinstance(pause_key, str) and not pause_key.strip()
            ):
                raise InvalidArgument("pause_key", "expected True or a key (plugin[:event_type])")
            seconds = check.seconds(
                "RetryLater delay", wait, allow_zero=False, maximum=MAX_PAUSE_SECONDS
            )
        else:
            seconds = check.seconds("RetryLater delay", wait)
        default = (
            f"{'key paused' if pause_key is not False else 'retry requested'} for {seconds:g}s"
        )
        super().__init__(message or default)
        self.delay = seconds
        self.code = code
        self.pause_key = pause_key


@dataclass(frozen=True, slots=True)
class RoutePolicy(RetryPolicy):
    """A :class:`RetryPolicy` whose base delay and multiplier may override the item's own.

    ``delay``/``multiplier`` left as None keep the item's ``retry_delay_seconds`` and
    ``backoff_multiplier`` columns.
    """

    base_delay: float | None = None
    multiplier: float | None = None

    def delay(self, retry_count: int, retry_delay_seconds: float, multiplier: float) -> timedelta:
        """The backoff delay, using this route's base delay and multiplier where set."""
        return RetryPolicy.delay(
            self,
            retry_count,
            retry_delay_seconds if self.base_delay is None else self.base_delay,
            multiplier if self.multiplier is None else self.multiplier,
        )


@dataclass(frozen=True, slots=True)
class Route:
    """One handler and the items it takes, with its retry settings.

    ``retry_on``: exception classes worth retrying (None: every exception); anything else
    fails the item at once. ``delay``, ``multiplier``, ``max_delay`` (seconds) and
    ``jitter`` override the queue's backoff for this route's items. ``retry_for``
    (seconds from the item's ``created_at``) is the retry deadline of this route's items
    enqueued without one of their own.
    """

    pattern: str
    handler: Handler
    plugin_name: str | None = None
    retry_on: tuple[type[BaseException], ...] | None = None
    delay: float | None = None
    multiplier: float | None = None
    max_delay: float | None = None
    jitter: float | None = None
    name: str = field(default="", compare=False)
    retry_for: float | None = None

    def matches(self, event_type: str, plugin_name: str | None) -> bool:
        """Whether this route takes an item of this event type and plugin."""
        if self.plugin_name is not None and self.plugin_name != plugin_name:
            return False
        if self.pattern == "*":
            return True
        if self.pattern.endswith(".*"):
            return event_type.startswith(self.pattern[:-1])
        return event_type == self.pattern

    def retryable(self, exc: BaseException) -> bool:
        """Whether a failure with this exception should be retried."""
        return self.retry_on is None or isinstance(exc, self.retry_on)

    def policy(self, base: RetryPolicy) -> RetryPolicy | None:
        """The retry policy for this route's failures, built on the queue's ``base`` policy.

        None when the route changes nothing (the queue's policy applies).
        """
        settings = (self.delay, self.multiplier, self.max_delay, self.jitter, self.retry_for)
        if settings == (None,) * 5:
            return None
        return RoutePolicy(
            max_delay=base.max_delay
            if self.max_delay is None
            else timedelta(seconds=self.max_delay),
            jitter=base.jitter if self.jitter is None else self.jitter,
            rand=base.rand,
            retry_for=base.retry_for
            if self.retry_for is None
            else timedelta(seconds=self.retry_for),
            base_delay=self.delay,
            multiplier=self.multiplier,
        )

    def _rank(self) -> tuple[int, int, int]:
        exact = not (self.pattern == "*" or self.pattern.endswith(".*"))
        return (self.plugin_name is not None, exact, len(self.pattern))


_RESOLUTIONS_KEPT = 4096


class Router:
    """Handlers by event type (exact or ``prefix.*``) and optionally by plugin name.

    Build it from a mapping (``Router({"payment.capture": capture})``), with the
    :meth:`route` decorator, or with :meth:`add`. When no route matches, the worker fails
    the item with error code ``NO_HANDLER``; it never drops it.
    """

    def __init__(self, handlers: Mapping[str, Handler] | None = None) -> None:
        self._routes: list[Route] = []
        # Resolutions by (event type, plugin), forgotten when a route is added; bounded, as
        # event types come from the queue's rows.
        self._resolved: dict[tuple[str, str | None], Route | None] = {}
        for pattern, handler in (handlers or {}).items():
            self.add(pattern, handler)

    def add(
        self,
        pattern: str,
        handler: Handler,
        *,
        plugin_name: str | None = None,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
        delay: float | timedelta | None = None,
        multiplier: float | None = None,
        max_delay: float | timedelta | None = None,
        jitter: float | None = None,
        retry_for: float | timedelta | None = None,
    ) -> Route:
        """Register ``handler`` for ``pattern`` (see :class:`Route` for the settings)."""
        _check_pattern(pattern)
        if not callable(handler):
            raise InvalidArgument("handler", f"{pattern!r}: expected a callable, got {handler!r}")
        if any(r.pattern == pattern and r.plugin_name == plugin_name for r in self._routes):
            raise InvalidArgument(
                "pattern", f"{pattern!r} (plugin {plugin_name!r}) is routed twice"
            )
        route = Route(
            pattern=pattern,
            handler=handler,
            plugin_name=plugin_name,
            retry_on=_exception_classes(retry_on),
            delay=_optional_seconds("delay", delay),
            multiplier=_optional_positive("multiplier", multiplier),
            max_delay=_optional_seconds("max_delay", max_delay),
            jitter=_optional_jitter(jitter),
            name=getattr(handler, "__qualname__", repr(handler)),
            retry_for=_optional_retry_for(retry_for),
        )
        self._routes.append(route)
        self._resolved = {}
        return route

    def route(
        self, pattern: str, **settings: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of :meth:`add`: ``@router.route("payment.*", retry_on=TimeoutError)``."""

        def register(handler: Callable[..., Any]) -> Callable[..., Any]:
            self.add(pattern, handler, **settings)
            return handler

        return register

    def resolve(self, event_type: str, plugin_name: str | None = None) -> Route | None:
        """The most specific route for an item, or None."""
        key = (event_type, plugin_name)
        resolved = self._resolved
        try:
            return resolved[key]
        except KeyError:
            pass
        candidates = [r for r in self._routes if r.matches(event_type, plugin_name)]
        route = max(candidates, key=Route._rank, default=None)
        if len(resolved) >= _RESOLUTIONS_KEPT:
            resolved.clear()
        resolved[key] = route
        return route

    def __iter__(self) -> Iterator[Route]:
        return iter(list(self._routes))

    def __len__(self) -> int:
        return len(self._routes)

    def __repr__(self) -> str:
        return f"Router({[r.pattern for r in self._routes]!r})"


def as_router(handlers: Router | Mapping[str, Handler]) -> Router:
    """A Router as is, or one built from a mapping of event type to handler."""
    if isinstance(handlers, Router):
        return handlers
    if isinstance(handlers, Mapping):
        return Router(handlers)
    raise InvalidArgument(
        "handlers", f"expected a Router or a mapping, got {type(handlers).__name__}"
    )


def load_router(spec: str) -> Router:
    """Import ``"package.module:attribute"`` and make a Router of it.

    The attribute may be a :class:`Router`, a mapping of event type to handler, a handler
    (a function taking the job: it serves every event type), or a zero-argument callable
    returning a Router or mapping. Without ``:attribute`` the module's
    ``router`` or ``handlers`` attribute is used. Bad specs raise
    :class:`~retryqueue.errors.InvalidArgument`.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidArgument("spec", "expected 'package.module:attribute'")
    module_name, _, attribute = spec.strip().partition(":")
    if not module_name or (":" in spec and not attribute):
        raise InvalidArgument("spec", f"{spec!r}: expected 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidArgument("spec", f"{spec!r}: cannot import {module_name!r}: {exc}") from exc
    names = [attribute] if attribute else ["router", "handlers"]
    target = _lookup(module, names, spec)
    if not isinstance(target, Router | Mapping) and callable(target):
        if _takes_a_job(target):
            return Router({"*": target})  # a plain handler serves every event type
        target = target()
    if isinstance(target, Router | Mapping):
        return as_router(target)
    raise InvalidArgument(
        "spec",
        f"{spec!r} is a {type(target).__name__}; expected a Router, a mapping of event type "
        "to handler, a handler function, or a zero-argument callable returning a Router "
        "or mapping",
    )


def _takes_a_job(target: Callable[..., Any]) -> bool:
    """Whether ``target`` is a handler (one required positional parameter), not a factory."""
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: treat as a factory
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in parameters if p.kind in positional and p.default is p.empty]
    return len(required) == 1


def _lookup(module: Any, names: list[str], spec: str) -> Any:
    for name in names:
        target = module
        try:
            for part in name.split("."):
                target = getattr(target, part)
        except AttributeError:
            continue
        return target
    wanted = " or ".join(repr(name) for name in names)
    raise InvalidArgument("spec", f"{spec!r}: module {module.__name__!r} has no attribute {wanted}")


def _check_pattern(pattern: object) -> None:
    if not isinstance(pattern, str) or not pattern.strip():
        raise InvalidArgument("pattern", "expected a non-empty event type or 'prefix.*'")
    stem = pattern[:-2] if pattern.endswith(".*") else pattern
    if pattern != "*" and ("*" in stem or not stem):
        raise InvalidArgument(
            "pattern", f"{pattern!r}: '*' is allowed only as a trailing '.*' or alone"
        )


def _exception_classes(
    value: type[BaseException] | tuple[type[BaseException], ...] | None,
) -> tuple[type[BaseException], ...] | None:
    if value is None:
        return None
    classes = value if isinstance(value, tuple) else (value,)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise InvalidArgument("retry_on", f"expected exception classes, got {cls!r}")
    return classes


def _optional_seconds(name: str, value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
        raise InvalidArgument(name, f"expected seconds >= 0, got {value!r}")
    return check.seconds(name, seconds)


def _optional_retry_for(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    return check.seconds("retry_for", value, allow_zero=False)


def _optional_positive(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 1:
        raise InvalidArgument(name, f"expected a number >= 1, got {value!r}")
    return float(value)


def _optional_jitter(value: float | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidArgument("jitter", f"expected a number between 0 and 1, got {value!r}")
    return float(value)
