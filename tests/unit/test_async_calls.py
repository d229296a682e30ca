"""How the asyncio worker tells ``async def`` handlers from plain ones (asked once each)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from retryqueue.worker._async_calls import Kinds, invoke


async def _coroutine(job: Any) -> None:
    job.append(("loop", threading.current_thread() is threading.main_thread()))


def _plain(job: Any) -> None:
    job.append(("thread", threading.current_thread() is threading.main_thread()))


class _AsyncCallable:
    async def __call__(self, job: Any) -> None:
        job.append(("loop", threading.current_thread() is threading.main_thread()))


def test_kinds_tell_async_from_plain_and_keep_the_answer() -> None:
    kinds = Kinds()
    callable_object = _AsyncCallable()
    assert kinds.is_async(_coroutine) is True
    assert kinds.is_async(callable_object) is True
    assert kinds.is_async(_plain) is False
    assert {handler for handler, _ in kinds.values()} == {_coroutine, callable_object, _plain}
    kinds[id(_plain)] = (_plain, True)  # the kept answer is the one used
    assert kinds.is_async(_plain) is True


def test_a_new_handler_at_a_reused_id_is_asked_again() -> None:
    kinds = Kinds()
    kinds[id(_plain)] = (_coroutine, True)  # as if another handler had lived at this id
    assert kinds.is_async(_plain) is False
    assert kinds[id(_plain)] == (_plain, False)


def test_invoke_awaits_async_handlers_on_the_loop_and_runs_plain_ones_in_a_thread() -> None:
    seen: list[tuple[str, bool]] = []
    kinds = Kinds()

    async def main() -> None:
        await invoke(_coroutine, seen, kinds)  # type: ignore[arg-type]
        await invoke(_AsyncCallable(), seen, kinds)  # type: ignore[arg-type]
        await invoke(_plain, seen, kinds)  # type: ignore[arg-type]

    asyncio.run(main())
    assert seen == [("loop", True), ("loop", True), ("thread", False)]
