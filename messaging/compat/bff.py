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
from django.http import HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.selectors import artifacts_of_message
from agents.services import conversation
from agents.services.conversation import Posted
from chatproject.api import (
    PAGE_CURSOR_PARAM,
    PAGE_LIMIT_PARAM,
    SEQ_BEFORE_PARAM,
    StrictCharField,
    StrictInputSerializer,
    error_body,
    page_limit,
    query_int,
    request_user,
)
from messaging.compat.common import ReplyListener
from messaging.models import Message
from messaging.selectors import MessageRow
from messaging.sse import authenticate, csrf_failure, error_response, sse_json, sse_response
from threads import selectors as thread_selectors
from threads.errors import ApplicationError, Invalid
from threads.models import Thread, User
from threads.wire import WireSerializer

MAX_TITLE = 200
MAX_SESSION_PROMPT = 20_000
SESSION_TITLE_CHARS = 60  # a new session is named after the start of its first message

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
            PAGE_CURSOR_PARAM,
            PAGE_LIMIT_PARAM,
        ],
        responses=ListOutputSerializer,
        operation_id="bff_sessions_list",
        summary="BFF: the caller's chat sessions (threads), newest activity first",
    )
    def get(self, request: Request) -> Response:
        limit = page_limit(request.query_params)
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
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = serializer.validated_data
        thread, _ = conversation.thread_start(
            user=request_user(request),
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
        conversation.thread_remove(user=request_user(request), thread_id=session_id)
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
            SEQ_BEFORE_PARAM,
            PAGE_LIMIT_PARAM,
        ],
        responses=OutputSerializer,
        operation_id="bff_history",
        summary="BFF: a page of a session's messages, oldest first (newest page by default)",
    )
    def get(self, request: Request) -> Response:
        session_id = request.query_params.get("sessionId") or ""
        if not session_id:
            raise Invalid("sessionId is required.", fields={"sessionId": ["Required."]})
        thread, page = conversation.history_page(
            user=request_user(request),
            thread_id=session_id,
            before=query_int(request.query_params, "before"),
            limit=page_limit(request.query_params),
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
    if not isinstance(body.get("message"), str):
        raise Invalid("message is required.", fields={"message": ["Required."]})
    for key in ("sessionId", "modelId"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise Invalid(f"{key} must be a string.", fields={key: ["Must be a string."]})
    return body


def _post(user: User, body: dict[str, Any]) -> tuple[Thread, Posted, bool]:
    return conversation.session_post(
        user=user,
        session_id=body.get("sessionId") or None,
        text=body["message"],
        title=body["message"].strip()[:SESSION_TITLE_CHARS],
        model_ref=body.get("modelId"),
    )


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
        thread, posted = await listener.ask(
            body.get("sessionId") or None, lambda: _post(user, body)
        )
    except ApplicationError as exc:
        await listener.close()  # again, if ask closed it: closing twice is harmless
        return error_response(exc)
    assert posted.run is not None  # noqa: S101 - a new message with a model gets a run
    message_id, reply_id = posted.message.pk, posted.run.message_id

    async def stream() -> AsyncIterator[str]:
        try:
            yield sse_json(
                "session",
                {"sessionId": thread.pk, "messageId": message_id, "replyMessageId": reply_id},
            )
            async for step in listener.reply(reply_id):
                if step.kind == "delta":
                    yield sse_json("delta", step.data)
                    continue
                artifacts = await database_sync_to_async(reply_artifacts)(message_id=reply_id)
                yield sse_json(
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
            yield sse_json("error", {"message": "The reply took too long."})
        except LookupError as exc:
            yield sse_json("error", {"message": str(exc)})
        finally:
            await listener.close()

    return sse_response(stream())
