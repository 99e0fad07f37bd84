"""The Server-Sent Events door onto a user's event stream: GET /api/v1/events/?threadId=….

EventSource-compatible: each event carries an `id:` that encodes the position in every followed
thread (`thr_a:41,thr_b:7`), so the browser's automatic `Last-Event-ID` on reconnect resumes all
of them; `?lastEventId=` does the same for clients that cannot set headers. A comment line every
KEEPALIVE_SECONDS keeps proxies from closing an idle stream.

It also holds the one SSE response helper every SSE door uses (this one, Chat Svc's event stream,
the BFF's streamed reply): `sse_frame` writes a frame, `sse_response` the response with its
headers, and `subscription_queue` + `subscription_frames` relay a Subscription with keep-alives.
Each door keeps its own frames (names, payloads), which its clients depend on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.middleware.csrf import CsrfViewMiddleware

from chatproject.api import error_body
from messaging.events import TRANSIENT_TYPES
from messaging.streams import MAX_THREADS_PER_CONNECTION, Subscription
from threads.authentication import token_from_header, user_from_token
from threads.errors import ApplicationError, Invalid, retry_after_headers
from threads.models import User

logger = logging.getLogger(__name__)

KEEPALIVE_SECONDS = 15.0
QUEUE_LIMIT = 10_000


# --- the SSE response helper, shared by every SSE door -------------------------------------------


def sse_frame(
    data: str | None = None,
    *,
    event: str | None = None,
    id: str | None = None,
    retry: int | None = None,
    comment: str | None = None,
) -> str:
    """One SSE block, its fields in the order retry, id, event, data, comment. A multi-line
    `data` becomes one `data:` line per line, as the SSE format requires."""
    lines = []
    if retry is not None:
        lines.append(f"retry: {retry}")
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    if data is not None:
        lines.extend(f"data: {line}" for line in data.split("\n"))
    if comment is not None:
        lines.append(f": {comment}")
    return "\n".join(lines) + "\n\n"


def sse_json(event: str, data: Any) -> str:
    """A named event whose data is compact JSON."""
    return sse_frame(json.dumps(data, separators=(",", ":")), event=event)


KEEPALIVE_FRAME = sse_frame(comment="keep-alive")


def sse_response(frames: AsyncIterator[str]) -> StreamingHttpResponse:
    """The streamed response of an SSE door."""
    response = StreamingHttpResponse(frames, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response


def subscription_queue(user: User, *, label: str) -> tuple[Subscription, asyncio.Queue[str]]:
    """A Subscription for one SSE response, its events waiting in a bounded queue until the
    response sends them."""
    queue: asyncio.Queue[str] = asyncio.Queue(maxsize=QUEUE_LIMIT)

    async def send(text: str) -> None:
        try:
            queue.put_nowait(text)
        except asyncio.QueueFull:
            # A client this far behind is dropped; it reconnects and resumes from the log.
            logger.warning("%s of %s fell %d events behind; closing", label, user.pk, QUEUE_LIMIT)
            subscription.closed = True

    subscription = Subscription(user=user, send=send)
    return subscription, queue


async def subscription_frames(
    subscription: Subscription,
    queue: asyncio.Queue[str],
    *,
    hello: str,
    shape: Callable[[dict[str, Any], str], Awaitable[str | None]],
) -> AsyncIterator[str]:
    """The frames of a subscription's SSE response: `hello`, then each queued event as the
    door's `shape(event, text)` frames it (None: nothing to send), and a keep-alive after
    KEEPALIVE_SECONDS of silence. The subscription closes when the response ends."""
    try:
        yield hello
        while not subscription.closed:
            try:
                text = await asyncio.wait_for(queue.get(), timeout=KEEPALIVE_SECONDS)
            except TimeoutError:
                yield KEEPALIVE_FRAME
                continue
            frame = await shape(json.loads(text), text)
            if frame is not None:
                yield frame
    finally:
        await subscription.close()


# --- the native event stream ---------------------------------------------------------------------


def parse_positions(raw: str) -> dict[str, int]:
    """`thr_a:41,thr_b:7` → {"thr_a": 41, "thr_b": 7}; Invalid for anything else."""
    positions: dict[str, int] = {}
    if not raw.strip():
        return positions
    for part in raw.split(","):
        thread_id, sep, seq = part.strip().rpartition(":")
        if not sep or not thread_id or not seq.isdigit():
            raise Invalid(
                "Last-Event-ID must look like thr_a:41,thr_b:7.",
                fields={"lastEventId": ["Malformed."]},
            )
        positions[thread_id] = int(seq)
    return positions


def format_positions(positions: dict[str, int]) -> str:
    return ",".join(f"{thread_id}:{seq}" for thread_id, seq in positions.items())


async def authenticate(request: HttpRequest) -> User | None:
    """The caller of a plain async view: API token (header or ?token=) or session."""
    raw = token_from_header(request.headers.get("Authorization", "")) or request.GET.get("token")
    if raw:
        return await database_sync_to_async(user_from_token)(raw)
    user = await request.auser()
    return user if isinstance(user, User) and user.is_active else None


def csrf_failure(request: HttpRequest) -> JsonResponse | None:
    """For a write authenticated by the session cookie, Django's CSRF check (as DRF's
    SessionAuthentication does it); token callers are exempt, as a token is not ambient."""
    if token_from_header(request.headers.get("Authorization", "")) or request.GET.get("token"):
        return None
    middleware = CsrfViewMiddleware(lambda r: HttpResponse())
    reason = middleware.process_view(request, lambda r: HttpResponse(), (), {})
    if reason is None:
        return None
    return JsonResponse(error_body("permission_denied", "CSRF check failed."), status=403)


def error_response(exc: ApplicationError) -> JsonResponse:
    return JsonResponse(
        error_body(exc.code, exc.message, exc.fields),
        status=exc.status,
        headers=retry_after_headers(exc),
    )


async def events_stream(request: HttpRequest) -> HttpResponseBase:
    if request.method != "GET":
        return JsonResponse(error_body("method_not_allowed", "Use GET."), status=405)
    user = await authenticate(request)
    if user is None:
        return JsonResponse(
            error_body("not_authenticated", "Authentication credentials were not provided."),
            status=401,
        )
    thread_ids = list(dict.fromkeys(request.GET.getlist("threadId")))
    if len(thread_ids) > MAX_THREADS_PER_CONNECTION:
        return error_response(Invalid(f"At most {MAX_THREADS_PER_CONNECTION} threadId parameters."))
    try:
        resume = parse_positions(
            request.headers.get("Last-Event-ID") or request.GET.get("lastEventId", "")
        )
    except Invalid as exc:
        return error_response(exc)

    subscription, queue = subscription_queue(user, label="SSE client")
    positions: dict[str, int] = {}
    try:
        await subscription.open()
        for thread_id in thread_ids:

            async def announce(canonical: str, seq: int) -> None:
                positions[canonical] = seq

            await subscription.subscribe(thread_id, resume.get(thread_id), announce=announce)
            if thread_id in resume and thread_id in positions:
                positions[thread_id] = resume[thread_id]
    except ApplicationError as exc:
        await subscription.close()
        return error_response(exc)

    async def shape(event: dict[str, Any], text: str) -> str:
        thread_id = event.get("threadId")
        # Deltas are not numbered: their seq is no position to resume from.
        numbered = event.get("type") not in TRANSIENT_TYPES
        if numbered and thread_id in positions and isinstance(event.get("seq"), int):
            positions[thread_id] = event["seq"]
        return sse_frame(text, id=format_positions(positions), event=event["type"])

    hello = sse_frame(retry=2000, id=format_positions(positions), comment="connected")
    return sse_response(subscription_frames(subscription, queue, hello=hello, shape=shape))
