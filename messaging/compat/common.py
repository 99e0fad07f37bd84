"""What the compat doors share beyond the conversation layer (agents.services.conversation, which
posts, starts, reads and deletes for every door): hearing one AI reply on the event stream,
with a `Subscription` as every subscriber does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async

from messaging.events import EventType
from messaging.streams import Subscription
from threads.models import Thread, User

if TYPE_CHECKING:
    from agents.services.conversation import Posted

# The longest a door waits for a reply it is streaming: the worker's own limit, and then some.
REPLY_TIMEOUT_SECONDS = 600


@dataclass
class ReplyEvent:
    """A step of one AI reply: `delta` (data: messageId, offset, text) or `done` (data: the final
    message; usage)."""

    kind: str
    data: dict[str, Any]
    usage: dict[str, Any]


class ReplyListener:
    """Hears AI replies in one thread over the event stream, the way any subscriber does.

    Follow the thread *before* posting the question, so not one delta can be missed; then
    iterate `reply(message_id)` for that reply's deltas and its completion."""

    def __init__(self, *, user: User) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.subscription = Subscription(user=user, send=self._receive)

    async def _receive(self, text: str) -> None:
        self.queue.put_nowait(text)

    async def follow(self, thread_id: str) -> str:
        return await self.subscription.subscribe(thread_id)

    async def close(self) -> None:
        await self.subscription.close()

    async def ask(
        self, session_id: str | None, post: Callable[[], tuple[Thread, Posted, bool]]
    ) -> tuple[Thread, Posted]:
        """Run `post` (conversation.session_post, in a worker thread) so that not one delta of
        its reply can be missed: an existing session is followed before the post; a session
        the post made is followed after it, from the start of its log, which holds everything
        committed so far. On failure the listener is closed and the error raised."""
        try:
            if session_id is not None:
                await self.follow(session_id)
            thread, posted, created = await database_sync_to_async(post)()
            if created:
                await self.subscription.subscribe(thread.pk, 0)
        except BaseException:
            await self.close()
            raise
        return thread, posted

    async def reply(
        self, message_id: str, *, quiet_seconds: float = REPLY_TIMEOUT_SECONDS
    ) -> AsyncIterator[ReplyEvent]:
        """The reply's deltas, then its `done`; TimeoutError after `quiet_seconds` of silence."""
        while True:
            text = await asyncio.wait_for(self.queue.get(), timeout=quiet_seconds)
            event = json.loads(text)
            data = event.get("data", {})
            if event["type"] == EventType.MESSAGE_DELTA and data.get("messageId") == message_id:
                yield ReplyEvent("delta", data, {})
            elif (
                event["type"] == EventType.MESSAGE_COMPLETED
                and data.get("message", {}).get("id") == message_id
            ):
                yield ReplyEvent("done", data["message"], data.get("usage", {}))
                return
            elif event["type"] == EventType.THREAD_DELETED or (
                event["type"] == EventType.MESSAGE_DELETED and data.get("id") == message_id
            ):
                raise LookupError("The conversation was deleted while the reply was written.")
