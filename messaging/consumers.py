"""The WebSocket door onto a user's event stream: /ws/v1/events/.

Frames in: `{"action": "subscribe", "threadId": "thr_…", "lastSeq": 41}`, `unsubscribe`, `ping`.
Frames out: events (`{"type", "threadId", "seq", "data"}`), `{"type": "subscribed", ...}`
acknowledgements and `{"type": "error", "error": {"code", "message"}}`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from chatproject.api import service_unavailable
from chatproject.client_ip import scope_client_ip
from messaging.streams import Subscription
from threads import rates
from threads.errors import ApplicationError, Invalid, RateLimited, RetryLater
from threads.middleware import scope_user
from threads.models import User

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 1024
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_BIG = 1009
CLOSE_TOO_MANY = 4429  # after the refusal's own error frame, which says when to come back


def _connect_limits_take(user: User, address: str | None) -> None:
    rates.address_take(limit=rates.Limit.IP_WS_CONNECTS, address=address)
    rates.user_take(user=user, limit=rates.Limit.WS_CONNECTS)


class HubSocket(AsyncWebsocketConsumer):
    """What every Threadline socket (this one, AI-at-Work's) does the same way: its caller,
    its frame limit, and no channel of its own."""

    # No channel-layer channel per socket: the process's event hub (messaging.events) does the
    # layer work for all its sockets, and a per-socket channel would only add a receive loop
    # and a queue to every connection. An alias that names no layer turns it off.
    channel_layer_alias = "none: sockets use the event hub"

    async def caller(self) -> User | None:
        """The signed-in user; otherwise the socket is closed (4401) and None returned. A
        connect over the address's or the user's rate gets the refusal frame (`refuse`) and
        the close 4429."""
        user = scope_user(self.scope)
        if user is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return None
        try:
            await database_sync_to_async(_connect_limits_take)(user, scope_client_ip(self.scope))
        except RateLimited as exc:
            # Accepted only to say why in the protocol's own error frame, then closed.
            await self.accept()
            await self.refuse(exc)
            await self.close(code=CLOSE_TOO_MANY)
            return None
        return user

    async def refuse(self, exc: ApplicationError) -> None:
        """Send the refusal in this protocol's error frame."""
        raise NotImplementedError

    async def frame_text(self, text_data: str | None, bytes_data: bytes | None) -> str | None:
        """A received frame as text; a frame over MAX_FRAME_BYTES closes the socket (1009)."""
        raw = text_data if text_data is not None else (bytes_data or b"").decode("utf-8", "replace")
        if len(raw.encode()) > MAX_FRAME_BYTES:
            await self.close(code=CLOSE_TOO_BIG)
            return None
        return raw


class EventsConsumer(HubSocket):
    subscription: Subscription | None = None

    async def connect(self) -> None:
        user = await self.caller()
        if user is None:
            return
        await self.accept()
        self.subscription = Subscription(user=user, send=self._send_text)
        try:
            await self.subscription.open()
        except ApplicationError as exc:
            await self._error(exc)
            await self.close(code=CLOSE_FORBIDDEN)

    async def disconnect(self, code: int) -> None:
        if self.subscription is not None:
            await self.subscription.close()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.subscription is None:
            return
        raw = await self.frame_text(text_data, bytes_data)
        if raw is None:
            return
        try:
            frame = json.loads(raw)
        except ValueError:
            await self._error(Invalid("Frames are JSON objects."))
            return
        if not isinstance(frame, dict):
            await self._error(Invalid("Frames are JSON objects."))
            return
        try:
            await self._dispatch(frame)
        except ApplicationError as exc:
            await self._error(exc, request=frame)
        except Exception as exc:
            unavailable = service_unavailable(exc)  # the database or Redis restarting
            if unavailable is None:
                raise
            await self._error(unavailable, request=frame)

    async def _dispatch(self, frame: dict[str, Any]) -> None:
        assert self.subscription is not None  # noqa: S101 - set before any frame is read
        action = frame.get("action")
        if action == "ping":
            await self._send_json({"type": "pong", "ref": frame.get("ref")})
            return
        thread_id = frame.get("threadId")
        if action not in {"subscribe", "unsubscribe"}:
            raise Invalid(f"Unknown action {action!r}.", fields={"action": ["Unknown action."]})
        if not isinstance(thread_id, str) or not thread_id:
            raise Invalid("threadId is required.", fields={"threadId": ["Required."]})
        if action == "unsubscribe":
            await self.subscription.unsubscribe(thread_id)
            await self._send_json({"type": "unsubscribed", "threadId": thread_id})
            return
        last_seq = frame.get("lastSeq")
        if last_seq is not None and (not isinstance(last_seq, int) or isinstance(last_seq, bool)):
            raise Invalid("lastSeq must be an integer.", fields={"lastSeq": ["Not an integer."]})
        await database_sync_to_async(rates.user_take)(
            user=self.subscription.user, limit=rates.Limit.WS_SUBSCRIBES
        )
        await self.subscription.subscribe(thread_id, last_seq, announce=self._announce)

    async def refuse(self, exc: ApplicationError) -> None:
        await self._error(exc)

    async def _announce(self, thread_id: str, seq: int) -> None:
        # Sent once access is granted and before the catch-up events that follow it.
        await self._send_json({"type": "subscribed", "threadId": thread_id, "seq": seq})

    async def _send_text(self, text: str) -> None:
        await self.send(text_data=text)

    async def _send_json(self, payload: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(payload, separators=(",", ":")))

    async def _error(self, exc: ApplicationError, request: dict[str, Any] | None = None) -> None:
        payload: dict[str, Any] = {
            "type": "error",
            "error": {"code": exc.code, "message": exc.message, "fields": exc.fields},
        }
        if isinstance(exc, RetryLater):
            payload["error"]["retryAfter"] = exc.retry_after
        if request is not None:
            payload["action"] = request.get("action")
            payload["threadId"] = request.get("threadId")
        await self._send_json(payload)
