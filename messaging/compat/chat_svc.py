"""1Backend's Chat Svc on Threadline's services: the `/chat-svc/...` routes with Chat Svc's
paths, methods and JSON shapes, for clients written against it.

    POST   /chat-svc/thread                      {id?, title?, userIds?, topicIds?} → {"thread"}
    POST   /chat-svc/threads                     {ids?}                  → {"threads": [...]}
    DELETE /chat-svc/thread/{threadId}                                   → {}
    POST   /chat-svc/thread/{threadId}/message   {id?, text?, fileIds?, meta?} → {}
    POST   /chat-svc/messages                    {threadId?, ids?, limit?, before?, after?}
                                                                         → {"messages": [...]}
    DELETE /chat-svc/message/{messageId}                                 → {}
    GET    /chat-svc/events                      the event documentation, or with
                                                 `Accept: text/event-stream` the live stream

Authentication is `Authorization: Bearer <token>`. Permissions are the native API's: the
`chat-svc:*` names plus thread membership (which Chat Svc itself did not check), and the same
owner/author rules. Errors keep Chat Svc's `{"error": "<text>"}` (its ErrorResponse type) with
the matching status; an outsider's thread answers exactly as a missing one (404).

Each route is thin: parse, `access_thread` / `access_message`, one service, shape the answer.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.db import database_sync_to_async
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.urls import path
from rest_framework import serializers
from rest_framework.parsers import JSONParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.services import conversation
from chatproject.api import StrictCharField, api_exception_handler, request_user
from messaging import selectors, services
from messaging.apis import _MetaField
from messaging.events import EventType
from messaging.models import Message
from messaging.selectors import MAX_PAGE_SIZE, MessageRow
from messaging.sse import (
    authenticate,
    sse_frame,
    sse_json,
    sse_response,
    subscription_frames,
    subscription_queue,
)
from messaging.streams import MAX_THREADS_PER_CONNECTION, Subscription
from threads import selectors as thread_selectors
from threads.authentication import BearerTokenAuthentication
from threads.errors import ApplicationError, Forbidden, Invalid, NotFound, retry_after_headers
from threads.ids import ID_MAX_LENGTH
from threads.models import Thread, User
from threads.permissions import Perm, has_perm, require_perm
from threads.selectors import access_thread, thread_get, users_by_reference
from threads.wire import iso

logger = logging.getLogger(__name__)

MAX_TITLE = 200
MAX_LIST = 100

# --- wire shapes


def chat_thread_json(thread: Thread) -> dict[str, Any]:
    """Chat Svc's Thread. Expects memberships and topics prefetched (thread_get)."""
    return {
        "id": thread.pk,
        "title": thread.title,
        "userIds": [m.user_id for m in thread.memberships.all()],
        "topicIds": sorted(topic.pk for topic in thread.topics.all()),
        "createdAt": iso(thread.created_at),
        "updatedAt": iso(thread.updated_at),
    }


def chat_message_json(message: Message | MessageRow) -> dict[str, Any]:
    """Chat Svc's Message: an AI message has an empty userId and meta.modelId / platformId."""
    return {
        "id": message.id,
        "threadId": message.thread_id,
        "text": message.text,
        "userId": message.author_id or "",
        "fileIds": message.file_ids,
        "meta": message.meta,
        "createdAt": iso(message.created_at),
        "updatedAt": iso(message.updated_at),
    }


def chat_svc_error(
    message: str, status: int, headers: dict[str, str] | None = None
) -> JsonResponse:
    return JsonResponse({"error": message}, status=status, headers=headers)


def chat_svc_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """The native handler decides status and text; Chat Svc's clients get `{"error": text}`."""
    response = api_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "error" in response.data:
        response.data = {"error": response.data["error"]["message"]}
    return response


class ChatSvcApi(APIView):
    # Chat Svc authenticates with bearer tokens only; no session cookie, so no CSRF question.
    authentication_classes = [BearerTokenAuthentication]
    permission_classes = [IsAuthenticated]
    parser_classes = [JSONParser]
    # Another service's protocol, documented in docs/compat.md; the OpenAPI document is the
    # native API's.
    schema = None

    def get_exception_handler(self) -> Any:
        return chat_svc_exception_handler


def _users(refs: list[str]) -> list[User]:
    users, missing = users_by_reference(refs=refs)
    if missing:
        raise Invalid(f"Unknown users: {', '.join(missing)}.", fields={"userIds": missing})
    return users


def _own_thread(user: User, thread_id: str) -> Thread | None:
    """The caller's thread with this id, or None when there is none they may edit (missing,
    or someone else's: the create that follows then answers 409 as the native API does)."""
    if not has_perm(user, Perm.THREAD_EDIT):
        return None
    try:
        return access_thread(user=user, thread_id=thread_id, perm=Perm.THREAD_EDIT)
    except NotFound:
        return None


# --- threads


class SaveThreadApi(ChatSvcApi):
    """Create a thread, or update the caller's thread with this id. Unknown keys are ignored,
    as Chat Svc's JSON decoding ignored them."""

    class InputSerializer(serializers.Serializer):
        id = StrictCharField(required=False, allow_blank=True, max_length=ID_MAX_LENGTH)
        title = StrictCharField(required=False, allow_blank=True, max_length=MAX_TITLE)
        userIds = serializers.ListField(
            child=StrictCharField(max_length=150), required=False, max_length=MAX_LIST
        )
        topicIds = serializers.ListField(
            child=StrictCharField(max_length=ID_MAX_LENGTH),
            required=False,
            max_length=MAX_LIST,
        )

    def post(self, request: Request) -> Response:
        user = request_user(request)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = serializer.validated_data
        thread_id = data.get("id") or None
        thread = _own_thread(user, thread_id) if thread_id else None
        if thread is not None:
            self._update(user, thread, data)
        else:
            thread, created = conversation.thread_start(
                user=user,
                title=data.get("title", ""),
                members=_users(data.get("userIds", [])),
                topic_ids=data.get("topicIds", []),
                thread_id=thread_id,
                topics_as_tags=True,
            )
            if not created:
                # The caller's own thread, which they may not edit: say so rather than
                # answer as if the update had happened.
                require_perm(user, Perm.THREAD_EDIT)
        return Response({"thread": chat_thread_json(thread_get(thread_id=thread.pk))})

    @staticmethod
    def _update(user: User, thread: Thread, data: dict[str, Any]) -> None:
        """Title and topics as given; userIds adds the users not yet in (the owner's right, as
        natively). Nobody is removed here: removing members is the native API's DELETE."""
        with transaction.atomic():
            title = data.get("title", "").strip() or None
            if title is not None or "topicIds" in data:
                services.thread_update(
                    thread=thread, title=title, topic_ids=data.get("topicIds"), topics_as_tags=True
                )
            present = {m.user_id for m in thread_get(thread_id=thread.pk).memberships.all()}
            new = [u for u in _users(data.get("userIds", [])) if u.pk not in present]
            if new:
                services.membership_add(thread=thread, actor=user, users=new)


class ListThreadsApi(ChatSvcApi):
    class InputSerializer(serializers.Serializer):
        ids = serializers.ListField(
            child=StrictCharField(max_length=ID_MAX_LENGTH),
            required=False,
            max_length=MAX_PAGE_SIZE,
        )

    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        threads = thread_selectors.threads_by_ids(
            user=request_user(request), ids=serializer.validated_data.get("ids") or None
        )
        return Response({"threads": [chat_thread_json(thread) for thread in threads]})


class DeleteThreadApi(ChatSvcApi):
    def delete(self, request: Request, thread_id: str) -> Response:
        conversation.thread_remove(user=request_user(request), thread_id=thread_id)
        return Response({})


# --- messages


class SaveMessageApi(ChatSvcApi):
    """Post a message, or edit the caller's message with this id (its text). A thread whose
    aiReply is on answers, as it does natively."""

    class InputSerializer(serializers.Serializer):
        id = StrictCharField(required=False, allow_blank=True, max_length=ID_MAX_LENGTH)
        text = StrictCharField(required=False, allow_blank=True, trim_whitespace=False)
        fileIds = serializers.ListField(
            child=StrictCharField(max_length=ID_MAX_LENGTH),
            required=False,
            max_length=services.MAX_FILES_PER_MESSAGE,
        )
        meta = _MetaField(required=False)
        # Chat Svc let a client name the author; here it may only name itself.
        userId = StrictCharField(required=False, allow_blank=True, max_length=ID_MAX_LENGTH)

    def post(self, request: Request, thread_id: str) -> Response:
        user = request_user(request)
        thread = access_thread(user=user, thread_id=thread_id, perm=Perm.MESSAGE_CREATE)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = serializer.validated_data
        if data.get("userId") and data["userId"] != user.pk:
            raise Forbidden("You can only post messages as yourself.")
        text = data.get("text", "")
        message_id = data.get("id") or None
        existing = self._own_message(user, message_id) if message_id else None
        if existing is not None:
            if existing.thread_id != thread.pk:
                raise Invalid(
                    "This message belongs to another thread.", fields={"id": [message_id]}
                )
            conversation.message_revise(user=user, message=existing, text=text)
            return Response({})
        conversation.message_send(
            user=user,
            thread=thread,
            text=text,
            file_ids=data.get("fileIds", []),
            meta=data.get("meta"),
            message_id=message_id,
        )
        return Response({})

    @staticmethod
    def _own_message(user: User, message_id: str) -> Message | None:
        if not has_perm(user, Perm.MESSAGE_VIEW):
            return None
        try:
            return selectors.access_message(
                user=user, message_id=message_id, perm=Perm.MESSAGE_VIEW
            )
        except NotFound:
            return None


class ListMessagesApi(ChatSvcApi):
    """A thread's messages oldest first (all of them, as Chat Svc answered), or a page of them
    when `limit`, `before` or `after` is given (Threadline's keyset paging on seq; the answer
    then also carries hasOlder / hasNewer). `ids` alone reads those messages from any of the
    caller's threads."""

    class InputSerializer(serializers.Serializer):
        threadId = StrictCharField(required=False, allow_blank=True, max_length=200)
        ids = serializers.ListField(
            child=StrictCharField(max_length=ID_MAX_LENGTH),
            required=False,
            max_length=MAX_PAGE_SIZE,
        )
        limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_PAGE_SIZE)
        before = serializers.IntegerField(required=False, min_value=0)
        after = serializers.IntegerField(required=False, min_value=0)

    def post(self, request: Request) -> Response:
        user = request_user(request)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = serializer.validated_data
        ids = data.get("ids") or []
        if not data.get("threadId"):
            if not ids:
                raise Invalid("Give threadId or ids.", fields={"threadId": ["Required."]})
            rows = selectors.messages_by_ids(user=user, ids=ids)
            return Response({"messages": [chat_message_json(row) for row in rows]})
        body: dict[str, Any] = {}
        if {"limit", "before", "after"} & set(data):
            _, page = conversation.history_page(
                user=user,
                thread_id=data["threadId"],
                before=data.get("before"),
                after=data.get("after"),
                limit=data.get("limit", 50),
            )
            rows = page.messages
            body = {"hasOlder": page.has_older, "hasNewer": page.has_newer}
        else:
            _, rows = conversation.history_all(user=user, thread_id=data["threadId"])
        if ids:
            wanted = set(ids)
            rows = [row for row in rows if row.id in wanted]
        return Response({"messages": [chat_message_json(row) for row in rows], **body})


class DeleteMessageApi(ChatSvcApi):
    def delete(self, request: Request, message_id: str) -> Response:
        user = request_user(request)
        message = selectors.access_message(
            user=user, message_id=message_id, perm=Perm.MESSAGE_DELETE
        )
        selectors.require_message_deleter(user=user, message=message)
        services.message_delete(message=message)
        return Response({})


# --- events

THREAD_ADDED = "chatThreadAdded"
THREAD_UPDATE = "chatThreadUpdate"
MESSAGE_ADDED = "chatMessageAdded"

# Chat Svc's three events say only *which* thread changed; its clients then refetch. So every
# change a client must refetch for is told by the nearest of the three: a message posted,
# edited, finished by the AI or deleted is chatMessageAdded; a thread renamed, its members
# changed or the thread deleted is chatThreadUpdate. AI deltas are not told (refetching per
# token would be worse than waiting for the finished reply).
EVENT_NAMES: dict[str, str] = {
    EventType.THREAD_ADDED: THREAD_ADDED,
    EventType.THREAD_UPDATE: THREAD_UPDATE,
    EventType.THREAD_DELETED: THREAD_UPDATE,
    EventType.MEMBER_ADDED: THREAD_UPDATE,
    EventType.MEMBER_REMOVED: THREAD_UPDATE,
    EventType.MESSAGE_ADDED: MESSAGE_ADDED,
    EventType.MESSAGE_UPDATED: MESSAGE_ADDED,
    EventType.MESSAGE_COMPLETED: MESSAGE_ADDED,
    EventType.MESSAGE_DELETED: MESSAGE_ADDED,
}

EVENT_DOCS = {
    "events": [
        {
            "name": THREAD_ADDED,
            "data": {"threadId": "string"},
            "description": "A thread you are in was created, or you were added to one.",
        },
        {
            "name": THREAD_UPDATE,
            "data": {"threadId": "string"},
            "description": "A thread you are in changed: title, topics or members, or it was "
            "deleted. Refetch it (POST /chat-svc/threads).",
        },
        {
            "name": MESSAGE_ADDED,
            "data": {"threadId": "string"},
            "description": "A thread's messages changed: one was posted, edited, deleted, or an "
            "AI reply finished. Refetch them (POST /chat-svc/messages).",
        },
    ],
    "stream": "GET /chat-svc/events with Accept: text/event-stream and "
    "Authorization: Bearer <token>: one SSE event per change, "
    '`event: <name>` and `data: {"name": <name>, "data": {"threadId": ...}}`, for your threads '
    f"only (the {MAX_THREADS_PER_CONNECTION} most recently active, and every thread you join "
    "while connected).",
}


def _followed_threads(user: User) -> list[str]:
    page = thread_selectors.thread_list(user=user, limit=MAX_THREADS_PER_CONNECTION)
    return [thread.pk for thread in page.threads]


def _sse(name: str, thread_id: str) -> str:
    return sse_json(name, {"name": name, "data": {"threadId": thread_id}})


async def events(request: HttpRequest) -> HttpResponseBase:
    """The documentation of Chat Svc's events, or (Accept: text/event-stream) the caller's live
    stream of them, made by the same Subscription as the native WebSocket and SSE doors."""
    if request.method != "GET":
        return chat_svc_error("Use GET.", 405)
    if "text/event-stream" not in request.headers.get("Accept", ""):
        return JsonResponse(EVENT_DOCS)
    user = await authenticate(request)
    if user is None:
        return chat_svc_error("Authentication credentials were not provided.", 401)
    subscription, queue = subscription_queue(user, label="Chat Svc stream")
    try:
        await subscription.open()
        for thread_id in await database_sync_to_async(_followed_threads)(user):
            await subscription.subscribe(thread_id)
    except ApplicationError as exc:
        await subscription.close()
        return chat_svc_error(exc.message, exc.status, retry_after_headers(exc))

    async def shape(event: dict[str, Any], text: str) -> str | None:
        thread_id = str(event.get("threadId"))
        if event.get("type") == EventType.THREAD_ADDED and thread_id not in subscription.threads:
            # Followed before the client hears of it: whatever it does on hearing
            # (post, fetch) is already covered.
            await _follow_new(subscription, thread_id, event.get("seq"))
        name = EVENT_NAMES.get(event.get("type", ""))
        return None if name is None else _sse(name, thread_id)

    hello = sse_frame(retry=2000, comment="connected")
    return sse_response(subscription_frames(subscription, queue, hello=hello, shape=shape))


async def _follow_new(subscription: Subscription, thread_id: str, seq: Any) -> None:
    """Follow a thread the caller just joined, from the event that told them (so nothing
    committed since is missed)."""
    try:
        await subscription.subscribe(thread_id, seq if isinstance(seq, int) else None)
    except ApplicationError as exc:  # e.g. removed again already, or at the thread limit
        logger.info(
            "Chat Svc stream of %s cannot follow %s: %s", subscription.user.pk, thread_id, exc
        )
    except Exception:
        # The stream carries on with the threads it has; the client still heard of this one.
        logger.exception(
            "Chat Svc stream of %s: following %s failed", subscription.user.pk, thread_id
        )


urlpatterns = [
    path("thread", SaveThreadApi.as_view(), name="chat-svc-save-thread"),
    path("threads", ListThreadsApi.as_view(), name="chat-svc-list-threads"),
    path("thread/<str:thread_id>", DeleteThreadApi.as_view(), name="chat-svc-delete-thread"),
    path(
        "thread/<str:thread_id>/message",
        SaveMessageApi.as_view(),
        name="chat-svc-save-message",
    ),
    path("messages", ListMessagesApi.as_view(), name="chat-svc-list-messages"),
    path("message/<str:message_id>", DeleteMessageApi.as_view(), name="chat-svc-delete-message"),
    path("events", events, name="chat-svc-events"),
]
