"""The example bot: it stores chat messages and looks up media, retrying through the queue.

``ChatBot.on_event`` is called for every event from the chat server. It tries the work at
once; when a downstream service fails, it enqueues a retry instead of losing the event.
``router`` holds the handlers a retryqueue worker runs for those retries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from sqlalchemy.orm import Session

from retryqueue import RetryQueue
from retryqueue.worker.routing import PermanentError, RetryLater, Router


class MessageStore(Protocol):
    """Where chat messages go (a database in the real bot)."""

    def save(self, channel: str, user: str, message: str) -> None: ...


class MediaService(Protocol):
    """Looks up a media item (a remote API in the real bot)."""

    def lookup(self, media_id: str) -> dict[str, Any]: ...


class StoreUnavailable(Exception):
    """The message store did not answer; worth retrying."""

    code = "STORE_DOWN"


class RateLimited(Exception):
    """The media API said to come back later."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited, retry after {retry_after}s")
        self.retry_after = retry_after


class UnknownMedia(Exception):
    """The media API does not know this id; retrying cannot help."""


CHAT_EVENT = "cytube.event.chatMsg"
MEDIA_EVENT = "cytube.event.media.change"


class ChatBot:
    """Handles chat events now, or queues them for retry when a downstream fails."""

    def __init__(self, queue: RetryQueue, store: MessageStore, media: MediaService) -> None:
        self.queue = queue
        self.store = store
        self.media = media

    def on_event(
        self, session: Session, event_type: str, channel: str, data: Mapping[str, Any]
    ) -> None:
        """Process one event; on a transient failure, enqueue it for retry."""
        try:
            self.process(event_type, channel, data)
        except StoreUnavailable as exc:
            self.queue.enqueue(
                session,
                event_type,
                dict(data),
                channel_name=channel,
                plugin_name="sql",
                priority=7,
                max_retries=5,
                retry_delay_seconds=30,
                event_metadata={"first_error": str(exc)},
            )
        except RateLimited as exc:
            self.queue.enqueue(
                session,
                event_type,
                dict(data),
                channel_name=channel,
                plugin_name="media",
                priority=3,
                delay=exc.retry_after,
            )

    def process(self, event_type: str, channel: str, data: Mapping[str, Any]) -> None:
        """Do the work of one event (raises on downstream failure)."""
        if event_type == CHAT_EVENT:
            self.store.save(channel, str(data["user"]), str(data["message"]))
        elif event_type.startswith("cytube.event.media."):
            try:
                self.media.lookup(str(data["id"]))
            except UnknownMedia as exc:
                raise PermanentError(str(exc), code="UNKNOWN_MEDIA") from exc

    def router(self) -> Router:
        """The handlers that a retryqueue worker runs for the queued retries."""
        router = Router()

        @router.route(CHAT_EVENT, plugin_name="sql")
        def retry_chat(job: Any) -> None:
            self.process(job.event_type, job.channel_name or "", job.event_data)

        @router.route("cytube.event.media.*", plugin_name="media")
        def retry_media(job: Any) -> None:
            try:
                self.process(job.event_type, job.channel_name or "", job.event_data)
            except RateLimited as exc:
                raise RetryLater(exc.retry_after) from exc

        return router
