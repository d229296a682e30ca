"""The instrumentation seam: one slot that tracing (``retryqueue.otel``) fills, or nothing.

The library calls the installed :class:`Instrumentation` at four points: when items are
enqueued, around each handler attempt, when an attempt's outcome is recorded, and when
items are replayed. While :data:`active` is ``None`` (the default: nothing installed) each
point costs one attribute read, and nothing else is imported or done.

Only one instrumentation is installed at a time; :func:`install` replaces it and
:func:`uninstall` removes it. Use this module to write your own tracing bridge; most
applications use :class:`retryqueue.otel.RetryQueueInstrumentor` instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from retryqueue.results import ClaimedItem

__all__ = ["Instrumentation", "active", "install", "uninstall"]


class Instrumentation(Protocol):
    """What the library calls when an instrumentation is installed.

    Exceptions raised by these methods propagate to the caller: an instrumentation must
    not raise.
    """

    def enqueue(self, rows: list[dict[str, Any]]) -> AbstractContextManager[object]:
        """Around the INSERT of validated rows (dicts with ``event_id``, ``event_type``,
        ``event_metadata``...); may add entries to ``event_metadata`` (a dict or None) in
        place before the context is entered."""
        ...

    def attempt(self, item: ClaimedItem) -> AbstractContextManager[object]:
        """Around one handler run of ``item`` (on the thread or task that runs it)."""
        ...

    def outcome(
        self, item: ClaimedItem, outcome: str, delay: timedelta | None
    ) -> Mapping[str, Any] | None:
        """An attempt's outcome is being recorded (``completed``, ``retry_scheduled``,
        ``dead_lettered``, ``failed`` or ``lost``) in the caller's transaction; ``delay``
        is the backoff chosen for a retry. Returns entries to merge into the item's
        ``event_metadata`` (only for a recorded failure), or None."""
        ...

    def replay(self, item_ids: list[int], requested_by: str | None) -> Mapping[str, Any] | None:
        """Items were moved back to pending by an operator; returns entries to merge into
        their ``event_metadata``, or None."""
        ...


active: Instrumentation | None = None
"""The installed instrumentation, or None (the default)."""


def install(instrumentation: Instrumentation) -> None:
    """Make ``instrumentation`` the active one (replacing any other)."""
    global active
    active = instrumentation


def uninstall() -> None:
    """Remove the active instrumentation, if any."""
    global active
    active = None
