"""The dashboard BFF's chat routes (bff-chat-service), on Threadline's services. A session is a
thread; its history is the thread's messages.

    POST   /api/v1/chat/sessions       {title?, sessionPrompt?}  → 201 {"session": {...}}
    GET    /api/v1/chat/sessions       ?cursor=&limit=  → {"sessions": [...], "nextCursor"}
    DELETE /api/v1/chat/sessions/{id}                    → 204
    GET    /api/v1/chat/history        ?sessionId=&before=&limit=
                                       → {"sessionId", "messages", "hasOlder", "before"}
    POST   /api/v1/chat/messages       {sessionId?, message, modelId?} → text/event-stream

POST /api/v1/chat/messages streams the AI's reply in its own HTTP response as Server-Sent
Events, for clients that hold no socket (a missing sessionId starts a session):

    event: session   data: {"sessionId", "messageId", "replyMessageId"}
    event: delta     data: {"messageId", "offset", "text"}          (repeated)
    event: done      data: {"messageId", "status", "text", "error", "usage", "artifacts": [...]}

An error before the stream starts is the native JSON error with its status; once streaming, it
is an `event: error` with `{"message"}`. The BFF had no error shape of its own that clients
parse, so these routes keep Threadline's one error shape.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents import services as agent_services
from agents.selectors import artifacts_of_message, model_for_request
from chatproject.api import (
    StrictCharField,
    StrictInputSerializer,
    error_body,
    query_int,
    request_user,
)
from messaging import services
from messaging.compat.common import ReplyListener, post_message
from messaging.models import Message
from messaging.selectors import MAX_PAGE_SIZE, MessageRow, message_page
from messaging.sse import authenticate, csrf_failure, error_response
from threads import selectors as thread_selectors
from threads import services as thread_services
from threads.errors import ApplicationError, Invalid
from threads.models import Thread, User
from threads.permissions import Perm, require_perm
from threads.selectors import access_thread
from threads.wire import WireSerializer

MAX_TITLE = 200
MAX_SESSION_PROMPT = 20_000

# --- the artifacts hook --------------------------------------------------------------------


def reply_artifacts(*, message_id: str) -> list[dict[str, Any]]:
    """What the crew made besides text for the AI reply `message_id`, as the stream's final
    `done` event lists it."""
    return [
        {
            "id": artifact["id"],
            "kind": artifact["kind"],
            "title": artifact["title"],
            "contentType": artifact["contentType"],
            "url": artifact["contentUrl"],
        }
        for artifact in artifacts_of_message(message_id=message_id)
    ]


# --- sessions and history ------------------------------------------------------------------


# Each shape is declared once, as a serializer that both answers and documents the route.


class SessionOutput(WireSerializer):
    id = serializers.CharField()
    title = serializers.CharField(allow_blank=True)
    sessionPrompt = serializers.CharField(source="session_prompt", allow_blank=True)
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")
    lastActivityAt = serializers.DateTimeField(source="last_activity_at")


class HistoryMessageOutput(WireSerializer):
    id = serializers.CharField()
    role = serializers.SerializerMethodField()
    content = serializers.CharField(source="text", allow_blank=True)
    userId = serializers.CharField(source="author_id", allow_null=True)
    status = serializers.ChoiceField(choices=Message.Status.choices)
    fileIds = serializers.ListField(source="file_ids", child=serializers.CharField())
    seq = serializers.IntegerField()
    createdAt = serializers.DateTimeField(source="created_at")

    @extend_schema_field(serializers.ChoiceField(choices=["user", "assistant"]))
    def get_role(self, row: MessageRow) -> str:
        return "assistant" if row.author_id is None else "user"


class ChatSessionsApi(APIView):
    class InputSerializer(StrictInputSerializer):
        title = StrictCharField(required=False, allow_blank=True, max_length=MAX_TITLE)
        sessionPrompt = StrictCharField(
            required=False, allow_blank=True, max_length=MAX_SESSION_PROMPT
        )

    class ListOutputSerializer(serializers.Serializer):
        sessions = SessionOutput(many=True)
        nextCursor = serializers.CharField(allow_null=True)

    @extend_schema(
        parameters=[
            OpenApiParameter("cursor", str, description="nextCursor of the previous page."),
            OpenApiParameter(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": 200},
                description="1-200, default 50.",
            ),
        ],
        responses=ListOutputSerializer,
        operation_id="bff_sessions_list",
        summary="BFF: the caller's chat sessions (threads), newest activity first",
    )
    def get(self, request: Request) -> Response:
        limit = query_int(request.query_params, "limit", default=50, minimum=1) or 50
        if limit > MAX_PAGE_SIZE:
            raise Invalid("limit must be 1 to 200.", fields={"limit": ["Out of range."]})
        page = thread_selectors.thread_list(
            user=request_user(request),
            cursor=request.query_params.get("cursor") or None,
            limit=limit,
        )
        return Response(
            self.ListOutputSerializer(
                {"sessions": page.threads, "nextCursor": page.next_cursor}
            ).data
        )

    class CreateOutputSerializer(serializers.Serializer):
        session = SessionOutput()

    @extend_schema(
        request=InputSerializer,
        responses={201: CreateOutputSerializer},
        operation_id="bff_sessions_create",
        summary="BFF: start a chat session (a thread the caller owns)",
    )
    def post(self, request: Request) -> Response:
        user = request_user(request)
        require_perm(user, Perm.THREAD_CREATE)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = serializer.validated_data
        thread, _ = services.thread_create(
            creator=user,
            title=data.get("title", ""),
            session_prompt=data.get("sessionPrompt", ""),
        )
        return Response(
            self.CreateOutputSerializer({"session": thread}).data, status=status.HTTP_201_CREATED
        )


class ChatSessionDetailApi(APIView):
    @extend_schema(
        responses={204: None},
        operation_id="bff_sessions_delete",
        summary="BFF: delete a session (its owner or an admin), its messages and files",
    )
    def delete(self, request: Request, session_id: str) -> Response:
        user = request_user(request)
        thread = access_thread(user=user, thread_id=session_id, perm=Perm.THREAD_DELETE)
        thread_services.require_owner(thread=thread, actor=user)
        agent_services.thread_delete(thread=thread)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ChatHistoryApi(APIView):
    class OutputSerializer(serializers.Serializer):
        sessionId = serializers.CharField()
        messages = HistoryMessageOutput(many=True)
        hasOlder = serializers.BooleanField()
        before = serializers.IntegerField(
            allow_null=True, help_text="Pass as ?before= for the page of older messages."
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("sessionId", {"type": "string", "minLength": 1}, required=True),
            OpenApiParameter(
                "before",
                {"type": "integer", "minimum": 0},
                description="Messages older than this seq.",
            ),
            OpenApiParameter(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": 200},
                description="1-200, default 50.",
            ),
        ],
        responses=OutputSerializer,
        operation_id="bff_history",
        summary="BFF: a page of a session's messages, oldest first (newest page by default)",
    )
    def get(self, request: Request) -> Response:
        session_id = request.query_params.get("sessionId") or ""
        if not session_id:
            raise Invalid("sessionId is required.", fields={"sessionId": ["Required."]})
        thread = access_thread(
            user=request_user(request), thread_id=session_id, perm=Perm.MESSAGE_VIEW
        )
        page = message_page(
            thread=thread,
            before=query_int(request.query_params, "before"),
            limit=query_int(request.query_params, "limit", default=50, minimum=1) or 50,
        )
        first = page.messages[0].seq if page.messages else None
        return Response(
            self.OutputSerializer(
                {
                    "sessionId": thread.pk,
                    "messages": page.messages,
                    "hasOlder": page.has_older,
                    "before": first if page.has_older else None,
                }
            ).data
        )


# --- the streamed reply -------------------------------------------------------------------


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
    message, _, run = post_message(user=user, thread=thread, text=text, model=model)
    assert run is not None  # noqa: S101 - a new message with a model always gets a run
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
    listener = ReplyListener(user=user)
    try:
        body = _parse(request)
        thread = await database_sync_to_async(_open_session)(
            user, body.get("sessionId"), body["message"]
        )
        # Follow the thread before posting, so not one delta of the reply can be missed.
        await listener.follow(thread.pk)
        message_id, reply_id = await database_sync_to_async(_post)(
            user, thread, body["message"], body.get("modelId")
        )
    except ApplicationError as exc:
        await listener.close()
        return error_response(exc)

    async def stream() -> AsyncIterator[str]:
        try:
            yield _frame(
                "session",
                {"sessionId": thread.pk, "messageId": message_id, "replyMessageId": reply_id},
            )
            async for step in listener.reply(reply_id):
                if step.kind == "delta":
                    yield _frame("delta", step.data)
                    continue
                artifacts = await database_sync_to_async(reply_artifacts)(message_id=reply_id)
                yield _frame(
                    "done",
                    {
                        "messageId": reply_id,
                        "status": step.data["status"],
                        "text": step.data["text"],
                        "error": step.data["meta"].get("error"),
                        "usage": step.usage,
                        "artifacts": artifacts,
                    },
                )
        except TimeoutError:
            yield _frame("error", {"message": "The reply took too long."})
        except LookupError as exc:
            yield _frame("error", {"message": str(exc)})
        finally:
            await listener.close()

    response = StreamingHttpResponse(stream(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
