"""REST interface for messages and files."""

from __future__ import annotations

from typing import Any

from django.core.files.uploadedfile import UploadedFile
from django.http.response import HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.services import conversation, run_stop
from chatproject.api import (
    PAGE_LIMIT_PARAM,
    SEQ_AFTER_PARAM,
    SEQ_BEFORE_PARAM,
    ClientIdField,
    StrictBooleanField,
    StrictCharField,
    StrictInputSerializer,
    bearer_token,
    page_limit,
    query_int,
    request_user,
)
from messaging import selectors, services
from messaging.events import EVENT_DOCS
from messaging.models import File
from messaging.storage import download_response
from messaging.uploads import upload_limit_install
from messaging.wire import MessageOutput
from threads.errors import Invalid
from threads.ids import ID_MAX_LENGTH
from threads.permissions import Perm, require_perm
from threads.selectors import access_thread

MAX_META_KEYS = 50


class FileOutput(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    contentType = serializers.CharField(source="content_type")
    size = serializers.IntegerField()
    sha256 = serializers.CharField()
    ownerId = serializers.CharField(source="owner_id")
    createdAt = serializers.DateTimeField(source="created_at")
    url = serializers.SerializerMethodField()

    def get_url(self, file: File) -> str:
        return f"/api/v1/files/{file.pk}/content/"


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


@extend_schema_field(
    {
        "type": "object",
        "maxProperties": MAX_META_KEYS,
        "additionalProperties": {},
        "description": "Free-form; text in it may not contain NUL characters.",
    }
)
class _MetaField(serializers.JSONField):
    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict) or len(data) > MAX_META_KEYS:
            raise serializers.ValidationError(f"An object with at most {MAX_META_KEYS} keys.")
        if _has_nul(data):
            # PostgreSQL's jsonb cannot hold NUL characters.
            raise serializers.ValidationError("Text in meta may not contain NUL characters.")
        return super().to_internal_value(data)


class ReplyOutput(serializers.Serializer):
    messageId = serializers.CharField(source="message_id", help_text="The AI's message.")
    runId = serializers.CharField(source="pk")
    modelId = serializers.CharField(source="model_id")


class ThreadMessagesApi(APIView):
    # The poster's message and reply rates (threads.rates), a budget (agents.services.budgets),
    # the caller's reply queue (reply_queue_full).
    too_many_requests_on = ("POST",)

    class InputSerializer(StrictInputSerializer):
        id = ClientIdField(required=False)
        text = StrictCharField(allow_blank=True, trim_whitespace=False)
        fileIds = serializers.ListField(
            child=StrictCharField(max_length=ID_MAX_LENGTH),
            required=False,
            max_length=services.MAX_FILES_PER_MESSAGE,
        )
        meta = _MetaField(required=False)
        reply = StrictBooleanField(
            required=False,
            help_text="Ask the AI to answer (default: the thread's aiReply setting).",
        )
        modelId = StrictCharField(
            required=False, max_length=100, help_text="A model id or name; default model if absent."
        )

    class PageOutputSerializer(serializers.Serializer):
        messages = MessageOutput(many=True)
        hasOlder = serializers.BooleanField()
        hasNewer = serializers.BooleanField()
        before = serializers.IntegerField(allow_null=True, help_text="Cursor for older messages.")
        after = serializers.IntegerField(allow_null=True, help_text="Cursor for newer messages.")

    @extend_schema(
        parameters=[
            SEQ_BEFORE_PARAM,
            SEQ_AFTER_PARAM,
            PAGE_LIMIT_PARAM,
        ],
        responses=PageOutputSerializer,
        summary="A page of a thread's messages, oldest first (keyset on seq)",
    )
    def get(self, request: Request, thread_id: str) -> Response:
        params = request.query_params
        _, page = conversation.history_page(
            user=request_user(request),
            thread_id=thread_id,
            before=query_int(params, "before"),
            after=query_int(params, "after"),
            limit=page_limit(params),
        )
        first = page.messages[0].seq if page.messages else None
        last = page.messages[-1].seq if page.messages else None
        after_cursor = last if last is not None else query_int(params, "after")
        return Response(
            self.PageOutputSerializer(
                {
                    "messages": page.messages,
                    "hasOlder": page.has_older,
                    "hasNewer": page.has_newer,
                    "before": first if page.has_older else None,
                    "after": after_cursor,
                }
            ).data
        )

    class PostOutputSerializer(MessageOutput):
        reply = ReplyOutput(
            required=False, help_text="Present when the post asked for an AI reply."
        )

    @extend_schema(
        request=InputSerializer,
        responses={201: PostOutputSerializer, 200: PostOutputSerializer},
        summary="Post a message (a retried post with the same id returns the first)",
    )
    def post(self, request: Request, thread_id: str) -> Response:
        user = request_user(request)
        thread = access_thread(user=user, thread_id=thread_id, perm=Perm.MESSAGE_CREATE)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = serializer.validated_data
        posted = conversation.message_send(
            user=user,
            thread=thread,
            text=data["text"],
            file_ids=data.get("fileIds", []),
            meta=data.get("meta"),
            message_id=data.get("id"),
            reply=data.get("reply"),
            model_ref=data.get("modelId"),
            gateway_token=bearer_token(request),
        )
        message, created, run = posted.message, posted.created, posted.run
        body = MessageOutput(message).data
        if run is not None:
            body["reply"] = ReplyOutput(run).data
        return Response(body, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class MessageDetailApi(APIView):
    class InputSerializer(StrictInputSerializer):
        text = StrictCharField(allow_blank=False, trim_whitespace=False)

    @extend_schema(responses=MessageOutput, summary="Read a message")
    def get(self, request: Request, message_id: str) -> Response:
        message = selectors.access_message(
            user=request_user(request), message_id=message_id, perm=Perm.MESSAGE_VIEW
        )
        return Response(MessageOutput(message).data)

    @extend_schema(request=InputSerializer, responses=MessageOutput, summary="Edit (author only)")
    def patch(self, request: Request, message_id: str) -> Response:
        message = selectors.access_message(
            user=request_user(request), message_id=message_id, perm=Perm.MESSAGE_EDIT
        )
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        message = conversation.message_revise(
            user=request_user(request), message=message, text=serializer.validated_data["text"]
        )
        return Response(MessageOutput(message).data)

    @extend_schema(responses={204: None}, summary="Delete (author, thread owner or admin)")
    def delete(self, request: Request, message_id: str) -> Response:
        message = selectors.access_message(
            user=request_user(request), message_id=message_id, perm=Perm.MESSAGE_DELETE
        )
        selectors.require_message_deleter(user=request_user(request), message=message)
        services.message_delete(message=message)
        return Response(status=status.HTTP_204_NO_CONTENT)


class MessageStopApi(APIView):
    @extend_schema(
        request=None,
        responses=MessageOutput,
        summary="Stop an AI reply (the asker, the thread's owner or an admin)",
        description="Generation stops within a second; the partial text stays, status "
        "`cancelled`, and only the tokens produced are charged.",
    )
    def post(self, request: Request, message_id: str) -> Response:
        user = request_user(request)
        message = selectors.access_message(user=user, message_id=message_id, perm=Perm.MESSAGE_VIEW)
        run_stop(message=message, actor=user)
        message.refresh_from_db()
        return Response(MessageOutput(message).data)


class MessageRegenerateApi(APIView):
    too_many_requests_on = ("POST",)  # the reply rate, a budget, the reply queue

    @extend_schema(
        request=None,
        responses={201: MessageOutput},
        summary="Answer the same question again, as a new AI message",
    )
    def post(self, request: Request, message_id: str) -> Response:
        user = request_user(request)
        message = selectors.access_message(
            user=user, message_id=message_id, perm=Perm.MESSAGE_CREATE
        )
        run = conversation.message_regenerate(
            user=user, message=message, gateway_token=bearer_token(request)
        )
        return Response(MessageOutput(run.message).data, status=status.HTTP_201_CREATED)


class FileUploadApi(APIView):
    parser_classes = [MultiPartParser]
    too_many_requests_on = ("POST",)  # the upload rate

    @extend_schema(
        request={
            "multipart/form-data": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
        responses={201: FileOutput},
        summary="Upload a file (multipart field `file`); over MAX_FILE_SIZE_MB is 413",
    )
    def post(self, request: Request) -> Response:
        # Uploading is the first half of posting a message with an attachment.
        require_perm(request_user(request), Perm.MESSAGE_CREATE)
        upload_limit_install(request)
        upload = request.FILES.get("file")
        if not isinstance(upload, UploadedFile):
            raise Invalid(
                "Send the file in a multipart field named 'file'.", fields={"file": ["Required."]}
            )
        file = conversation.file_upload(
            user=request_user(request),
            name=upload.name or "file",
            claimed_type=upload.content_type or "",
            stream=upload,
            size=upload.size or 0,
        )
        return Response(FileOutput(file).data, status=status.HTTP_201_CREATED)


class FileDetailApi(APIView):
    @extend_schema(responses=FileOutput, summary="A file's metadata")
    def get(self, request: Request, file_id: str) -> Response:
        return Response(
            FileOutput(selectors.access_file(user=request_user(request), file_id=file_id)).data
        )


class FileContentApi(APIView):
    @extend_schema(
        responses={(200, "*/*"): bytes, 302: None},
        summary="Download (with S3 storage: a redirect to a presigned URL valid for 5 minutes)",
    )
    def get(self, request: Request, file_id: str) -> HttpResponseBase:
        file = selectors.access_file(user=request_user(request), file_id=file_id)
        return download_response(file.content, filename=file.name, content_type=file.content_type)


class MessageHitOutput(serializers.Serializer):
    id = serializers.CharField()
    threadId = serializers.CharField(source="thread_id")
    seq = serializers.IntegerField()
    userId = serializers.CharField(source="author_id", allow_null=True)
    snippet = serializers.CharField(help_text="Plain text around the match, not HTML.")
    createdAt = serializers.DateTimeField(source="created_at")


class ThreadHitOutput(serializers.Serializer):
    id = serializers.CharField()
    title = serializers.CharField()
    lastActivityAt = serializers.DateTimeField(source="last_activity_at")


class SearchApi(APIView):
    # Not a StrictInputSerializer: a query string also carries keys that DRF itself reads
    # (`format`), which must not be refused as unknown.
    class InputSerializer(serializers.Serializer):
        q = serializers.CharField(max_length=selectors.MAX_SEARCH_QUERY_CHARS)
        threadId = serializers.CharField(required=False, allow_blank=True)
        limit = serializers.IntegerField(required=False)
        before = serializers.DateTimeField(required=False)

    class OutputSerializer(serializers.Serializer):
        messages = MessageHitOutput(many=True)
        threads = ThreadHitOutput(many=True)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "q",
                {"type": "string", "minLength": 1, "maxLength": selectors.MAX_SEARCH_QUERY_CHARS},
                required=True,
                description=f"Words to find (at most {selectors.MAX_SEARCH_QUERY_CHARS} "
                "characters). Every word must match; punctuation only separates words.",
            ),
            OpenApiParameter("threadId", str, description="Search this thread only."),
            OpenApiParameter(
                "limit",
                int,
                description=f"Hits per list, clamped to 1-{selectors.MAX_SEARCH_LIMIT}, "
                f"default {selectors.DEFAULT_SEARCH_LIMIT}.",
            ),
            OpenApiParameter(
                "before",
                OpenApiTypes.DATETIME,
                description="ISO 8601: only messages created before this.",
            ),
        ],
        responses=OutputSerializer,
        operation_id="search",
        summary="Search the caller's messages and thread titles",
        description="Messages: best match first, then newest, each with a plain-text snippet. "
        "Threads: titles containing every word, newest activity first. Needs "
        "chat-svc:message:view and chat-svc:thread:view; looks only in threads the caller "
        "is a member of (with `threadId`, any thread the caller may open).",
    )
    def get(self, request: Request) -> Response:
        user = request_user(request)
        # Both lists' permissions before anything else, so a caller missing either gets the
        # 403 whatever the threadId (each selector alone would first answer 404 for a bad one).
        require_perm(user, Perm.MESSAGE_VIEW)
        require_perm(user, Perm.THREAD_VIEW)
        serializer = self.InputSerializer(data=request.query_params)
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = serializer.validated_data
        thread_id = data.get("threadId") or None
        limit = data.get("limit", selectors.DEFAULT_SEARCH_LIMIT)
        messages = selectors.message_search(
            user=user, query=data["q"], thread_id=thread_id, limit=limit, before=data.get("before")
        )
        threads = selectors.thread_search(
            user=user, query=data["q"], thread_id=thread_id, limit=limit
        )
        return Response(self.OutputSerializer({"messages": messages, "threads": threads}).data)


class EventTypeOutput(serializers.Serializer):
    type = serializers.CharField()
    description = serializers.CharField()
    data = serializers.CharField(help_text="What the event's `data` holds.")  # type: ignore[assignment]


class EventTypesApi(APIView):
    """The events the WebSocket (/ws/v1/events/) and SSE (/api/v1/events/) doors deliver."""

    class ListOutputSerializer(serializers.Serializer):
        types = EventTypeOutput(many=True)

    @extend_schema(
        responses=ListOutputSerializer,
        summary="Event types",
        description=(
            "Every event is `{type, threadId, seq, data}`; `seq` rises by one per thread with "
            "every change. Follow threads over WebSocket at /ws/v1/events/ "
            '(`{"action": "subscribe", "threadId": ..., "lastSeq": ...}`) or over SSE at '
            "GET /api/v1/events/?threadId=... (resume with Last-Event-ID)."
        ),
    )
    def get(self, request: Request) -> Response:
        types = [
            {"type": str(kind), "description": description, "data": data}
            for kind, (description, data) in EVENT_DOCS.items()
        ]
        return Response(self.ListOutputSerializer({"types": types}).data)
