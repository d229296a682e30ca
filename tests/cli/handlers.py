"""Handlers loaded by the `retryqueue worker` tests (as tests.cli.handlers:router)."""

from __future__ import annotations

from retryqueue.worker import Job, PermanentError, Router

router = Router()


@router.route("chat.*")
def deliver(job: Job) -> None:
    """Succeeds unless the message asks to fail."""
    if job.event_data.get("fail"):
        raise PermanentError("recipient unknown", code="NO_RECIPIENT")


@router.route("crm.*")
async def sync_contact(job: Job) -> None:
    """An async handler (for --asyncio) whose downstream is down."""
    raise ConnectionError("crm unreachable")


def plain(job: Job) -> None:
    """A plain handler function (not a Router, mapping or factory): serves every event type."""
    if job.event_data.get("fail"):
        raise PermanentError("refused", code="REFUSED")
