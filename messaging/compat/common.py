"""What the three compat doors share: posting a message that may ask for an AI reply, reading a
whole thread, and hearing one AI reply on the event stream.

Nothing here decides anything the native API does not: posting is `message_post` and
`reply_request` in one transaction (the composition every interface makes, as the native
ThreadMessagesApi does), reading is `message_page`, hearing is a `Subscription`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from agents.models import AgentRun, AIModel
from agents.services import reply_request
from messaging import services
from messaging.events import EventType
from messaging.models import Message
from messaging.selectors import MAX_PAGE_SIZE, MessageRow, message_page
from messaging.streams import Subscription
from threads.models import Thread, User

# The longest a door waits for a reply it is streaming: the worker's own limit, and then some.
REPLY_TIMEOUT_SECONDS = 600


def post_message(
    *,
    user: User,
    thread: Thread,
    text: str,
    model: AIModel | None,
    file_ids: Sequence[str] = (),
    meta: dict[str, Any] | None = None,
    message_id: str | None = None,
    gateway_token: str | None = None,
) -> tuple[Message, bool, AgentRun | None]:
    """Post `user`'s message and, when `model` is given, ask it for a reply, in one transaction
    (a refused reply, e.g. for the balance, takes the question back with it). A retried post
    (same client id) returns the first message and asks for nothing."""
    with transaction.atomic():
        message, created = services.message_post(
            thread=thread,
            author=user,
            text=text,
            file_ids=file_ids,
            meta=meta,
            message_id=message_id,
        )
        run = None
        if created and model is not None:
            run = reply_request(
                thread=thread,
                requester=user,
                request_message=message,
                model=model,
                gateway_token=gateway_token,
            )
    return message, created, run


def thread_messages(*, thread: Thread) -> list[MessageRow]:
    """Every message of a thread, oldest first, read page by page along the (thread, seq) index.
    For protocols whose clients expect the whole conversation in one answer."""
    rows: list[MessageRow] = []
    after = 0
    while True:
        page = message_page(thread=thread, after=after, limit=MAX_PAGE_SIZE)
        rows.extend(page.messages)
        if not page.has_newer or not page.messages:
            return rows
        after = page.messages[-1].seq


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
