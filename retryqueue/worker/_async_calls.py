"""How the asyncio worker calls a handler: an ``async def`` one awaited on the event loop,
a plain one in a daemon thread of its own (so that a blocking handler never stalls the
loop). Private to :mod:`retryqueue.worker.async_worker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import threading

from retryqueue.worker._attempts import Job
from retryqueue.worker.routing import Handler

__all__ = ["Kinds", "invoke"]


def _is_async(handler: Handler) -> bool:
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004 - a callable object's method
    )


class Kinds(dict[int, tuple[Handler, bool]]):
    """Whether each handler is ``async def``, asked once per handler, not once per item."""

    def is_async(self, handler: Handler) -> bool:
        known = self.get(id(handler))
        if known is None or known[0] is not handler:  # kept alive here: its id stays its own
            known = self[id(handler)] = (handler, _is_async(handler))
        return known[1]


async def invoke(handler: Handler, job: Job, kinds: Kinds) -> None:
    """Await an ``async def`` handler on the loop, or run a plain one in a thread."""
    if kinds.is_async(handler):
        await handler(job)  # type: ignore[misc]
    else:
        await _in_daemon_thread(handler, job)


async def _in_daemon_thread(handler: Handler, job: Job) -> None:
    """Run a plain handler in a thread of its own and await it.

    A daemon thread, as in the thread worker: a handler still running when the shutdown
    grace runs out must not keep the process from exiting (an executor's threads would).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    context = contextvars.copy_context()  # the handler sees the task's context (its span)

    def settle(error: BaseException | None) -> None:
        if done.done():  # the awaiting task was cancelled (abandoned at shutdown)
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def target() -> None:
        try:
            context.run(handler, job)
        except BaseException as exc:  # handed to the awaiting task
            error: BaseException | None = exc
        else:
            error = None
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=target, name="retryqueue-handler", daemon=True).start()
    await done
