"""The dashboard BFF's chat route: POST /api/v1/chat/messages streams the AI's reply in its own
HTTP response as Server-Sent Events, for clients that hold no socket.

Request `{"sessionId"?: thr_…, "message": "…", "modelId"?: "…"}` (a missing sessionId starts a
session, i.e. a thread). The stream:

    event: session   data: {"sessionId", "messageId", "replyMessageId"}
    event: delta     data: {"messageId", "offset", "text"}          (repeated)
    event: done      data: {"messageId", "status", "text", "usage", "artifacts": []}

An error before the stream starts is the usual JSON error with its status; once streaming, it is
an `event: error` with `{"message"}`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from agents.selectors import model_for_request
from agents.services import reply_request
from chatproject.api import error_body
from messaging import services
from messaging.events import EventType
from messaging.sse import authenticate, csrf_failure, error_response
from messaging.streams import Subscription
from threads.errors import ApplicationError, Invalid
from threads.models import Thread, User
from threads.permissions import Perm, require_perm
from threads.selectors import access_thread

REPLY_TIMEOUT_SECONDS = 600


def _frame(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _parse(request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError as exc:
        raise Invalid("The body must be JSON.") from exc
    if not isinstance(body, dict):
        raise Invalid("The body must be a JSON object.")
    unknown = sorted(set(body) - {"sessionId", "message", "modelId"})
    if unknown:
        raise Invalid("Unknown fields.", fields={key: ["Unknown field."] for key in unknown})
    message = body.get("message")
    if not isinstance(message, str) or not message.strip():
        raise Invalid("message is required.", fields={"message": ["Required."]})
    if len(message) > settings.MAX_MESSAGE_CHARS:
        raise Invalid("message is too long.", fields={"message": ["Too long."]})
    for key in ("sessionId", "modelId"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise Invalid(f"{key} must be a string.", fields={key: ["Must be a string."]})
    return body


def _open_session(user: User, session_id: str | None, text: str) -> Thread:
    if session_id:
        return access_thread(user=user, thread_id=session_id, perm=Perm.MESSAGE_CREATE)
    require_perm(user, Perm.THREAD_CREATE)
    thread, _ = services.thread_create(creator=user, title=text.strip()[:60])
    return thread


def _post(user: User, thread: Thread, text: str, model_ref: str | None) -> tuple[str, str]:
    model = model_for_request(user=user, model_ref=model_ref)
    with transaction.atomic():
        message, _ = services.message_post(thread=thread, author=user, text=text)
        run = reply_request(thread=thread, requester=user, request_message=message, model=model)
    return message.pk, run.message_id


@csrf_exempt  # checked below for session callers; token callers need none
async def chat_messages(request: HttpRequest) -> HttpResponseBase:
    if request.method != "POST":
        return JsonResponse(error_body("method_not_allowed", "Use POST."), status=405)
    user = await authenticate(request)
    if user is None:
        return JsonResponse(error_body("not_authenticated", "Not authenticated."), status=401)
    refused = csrf_failure(request)
    if refused is not None:
        return refused
    queue: asyncio.Queue[str] = asyncio.Queue()

    async def send(text: str) -> None:
        queue.put_nowait(text)

    subscription = Subscription(user=user, send=send)
    try:
        body = _parse(request)
        thread = await database_sync_to_async(_open_session)(
            user, body.get("sessionId"), body["message"]
        )
        # Follow the thread before posting, so not one delta of the reply can be missed.
        await subscription.subscribe(thread.pk)
        message_id, reply_id = await database_sync_to_async(_post)(
            user, thread, body["message"], body.get("modelId")
        )
    except ApplicationError as exc:
        await subscription.close()
        return error_response(exc)

    async def stream() -> AsyncIterator[str]:
        try:
            yield _frame(
                "session",
                {"sessionId": thread.pk, "messageId": message_id, "replyMessageId": reply_id},
            )
            while True:
                try:
                    text = await asyncio.wait_for(queue.get(), timeout=REPLY_TIMEOUT_SECONDS)
                except TimeoutError:
                    yield _frame("error", {"message": "The reply took too long."})
                    return
                event = json.loads(text)
                data = event.get("data", {})
                if event["type"] == EventType.MESSAGE_DELTA and data.get("messageId") == reply_id:
                    yield _frame("delta", data)
                elif (
                    event["type"] == EventType.MESSAGE_COMPLETED
                    and data.get("message", {}).get("id") == reply_id
                ):
                    final = data["message"]
                    yield _frame(
                        "done",
                        {
                            "messageId": reply_id,
                            "status": final["status"],
                            "text": final["text"],
                            "error": final["meta"].get("error"),
                            "usage": data.get("usage", {}),
                            "artifacts": final["meta"].get("artifacts", []),
                        },
                    )
                    return
        finally:
            await subscription.close()

    response = StreamingHttpResponse(stream(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
