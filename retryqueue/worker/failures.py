"""What a failed attempt records: the error code and message, whether it is retried and
when (:func:`plan_failure`), with the exception's type and traceback.

No route: ``NO_HANDLER``, not retryable. :class:`~retryqueue.worker.routing.PermanentError`
or an exception the route does not retry: failed at once.
:class:`~retryqueue.worker.routing.RetryLater`: retried after its delay (or its key
paused). Anything else: retried with the route's policy, else the queue's.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from retryqueue import validation as check
from retryqueue.errors import InvalidArgument
from retryqueue.limits import MAX_PAUSE_SECONDS
from retryqueue.policy import Decision, RetryPolicy
from retryqueue.results import ClaimedItem
from retryqueue.worker.routing import PermanentError, RetryLater, Route

__all__ = ["NO_HANDLER", "FailurePlan", "describe", "exception_forensics", "plan_failure"]


_ERROR_CODE_LENGTH = 50
_ERROR_MESSAGE_LENGTH = 8000
NO_HANDLER = "NO_HANDLER"


@dataclass(frozen=True, slots=True)
class FailurePlan:
    """How a failed attempt is to be recorded: the arguments of ``RetryQueue.fail``.

    ``decision`` is what the policy will decide for it (for reporting; the queue makes
    the same decision under the item's row lock).
    """

    message: str
    code: str
    retryable: bool
    retry_after: float | None
    policy: RetryPolicy | None
    decision: Decision
    exception_type: str | None = None
    error_traceback: str | None = None
    pause_key: bool | str = False
    """From ``RetryLater(..., pause_key=...)``: pause the key for ``retry_after`` instead of
    counting the attempt."""

    def failure_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``RetryQueue.fail``/``record_failure`` for this plan."""
        return {
            "error_message": self.message,
            "error_code": self.code,
            "retryable": self.retryable,
            "retry_after": self.retry_after,
            "policy": self.policy,
            "exception_type": self.exception_type,
            "error_traceback": self.error_traceback,
        }


def exception_forensics(error: BaseException) -> tuple[str, str]:
    """The qualified type name and the formatted traceback of a handler's exception."""
    kind = type(error)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    try:
        formatted = "".join(traceback.format_exception(error))
    except Exception as exc:  # an exception whose __str__ raises, or worse: keep the frames
        frames = "".join(traceback.format_tb(error.__traceback__))
        formatted = f"{frames}{name}: <message unavailable: {type(exc).__name__}>\n"
    return name, formatted


def plan_failure(
    item: ClaimedItem, route: Route | None, error: BaseException | None, base: RetryPolicy
) -> FailurePlan | None:
    """What to record for an attempt: None if it succeeded, else a :class:`FailurePlan`.

    No route: ``NO_HANDLER``, not retryable. :class:`PermanentError` or an exception the
    route does not retry: failed at once. :class:`RetryLater`: retried after its delay.
    The error code is the exception's ``code`` attribute, else its class name.
    """
    if route is not None and error is None:
        return None
    pause: bool | str = False
    if route is None:
        message = f"no handler for event_type {item.event_type!r}"
        if item.plugin_name is not None:
            message += f" (plugin {item.plugin_name!r})"
        code, retryable, retry_after, policy = NO_HANDLER, False, None, None
    else:
        assert error is not None
        message = _clean(describe(error), _ERROR_MESSAGE_LENGTH)
        code = _clean(_code_of(error), _ERROR_CODE_LENGTH)
        retryable = not isinstance(error, PermanentError) and route.retryable(error)
        retry_after = None
        if isinstance(error, RetryLater):
            retryable = True
            try:
                retry_after = check.seconds("RetryLater delay", error.delay)
                pause = _pause_of(error, retry_after)
            except InvalidArgument as bad:  # changed after construction: backoff instead
                retry_after, pause = None, False
                message = _clean(f"{message} [ignored {bad}; retried with backoff]", 8000)
        policy = route.policy(base)
    decision = (policy or base).decide(
        retry_count=item.retry_count,
        max_retries=item.max_retries,
        retry_delay_seconds=item.retry_delay_seconds,
        backoff_multiplier=item.backoff_multiplier,
        retryable=retryable,
        retry_after=None if retry_after is None else timedelta(seconds=retry_after),
    )
    if error is None:
        return FailurePlan(message, code, retryable, retry_after, policy, decision)
    exception_type, error_traceback = exception_forensics(error)
    return FailurePlan(
        message,
        code,
        retryable,
        retry_after,
        policy,
        decision,
        exception_type,
        error_traceback,
        pause_key=pause,
    )


def _pause_of(error: RetryLater, seconds: float) -> bool | str:
    """A RetryLater's pause_key, checked again (it may have been changed after
    construction): False, True or a key."""
    pause = getattr(error, "pause_key", False)
    if pause is False:
        return False
    if not isinstance(pause, bool | str) or (isinstance(pause, str) and not pause.strip()):
        raise InvalidArgument("pause_key", "expected True or a key (plugin[:event_type])")
    check.seconds("RetryLater delay", seconds, allow_zero=False, maximum=MAX_PAUSE_SECONDS)
    return pause


def describe(error: BaseException) -> str:
    """An exception's message; never raises, even when its ``__str__`` does."""
    try:
        text = str(error)
    except Exception as exc:
        text = f"{type(error).__name__} (its message could not be read: {type(exc).__name__})"
    text = str.__str__(text)  # a plain str, even if __str__ returned a str subclass
    return text or type(error).__name__


def _code_of(error: BaseException) -> str:
    """The error code of a handler's exception: its ``code`` attribute, else its class name."""
    try:
        raw_code = getattr(error, "code", None)
        if raw_code not in (None, ""):
            return str(raw_code)
    except Exception:  # a code attribute that cannot be read or printed
        pass
    return type(error).__name__


def _clean(text: str, limit: int) -> str:
    """Text the database accepts: no NUL, valid UTF-8, not blank, at most ``limit`` long."""
    text = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
    text = text.strip() or "error"
    return text if len(text) <= limit else text[: limit - 3] + "..."
