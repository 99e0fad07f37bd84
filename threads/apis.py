"""REST interface for the caller, threads, members and topics. Thin: parse, one selector, one
service, shape the answer."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents.selectors import balance_of, budget_status, usage_of
from agents.services import conversation
from agents.wire import BudgetOutput, budget_fields
from chatproject.api import (
    PAGE_CURSOR_PARAM,
    PAGE_LIMIT_PARAM,
    ClientIdField,
    StrictBooleanField,
    StrictCharField,
    StrictInputSerializer,
    page_limit,
    request_user,
)
from messaging import services as actions
from threads import selectors, services
from threads.errors import Invalid
from threads.ids import ID_MAX_LENGTH
from threads.models import User
from threads.permissions import Perm, require_perm, user_chat_permissions
from threads.wire import MemberOutput, ThreadOutput

MAX_TITLE = 200
MAX_SESSION_PROMPT = 20_000
MAX_LIST = 100


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _user_refs(value: list[str]) -> list[User]:
    users, missing = selectors.users_by_reference(refs=value)
    if missing:
        raise Invalid("Unknown users.", fields={"userIds": missing})
    return users


class MeApi(APIView):
    class OutputSerializer(serializers.Serializer):
        id = serializers.CharField()
        username = serializers.CharField()
        email = serializers.CharField()
        isAdmin = serializers.BooleanField(source="is_admin")
        permissions = serializers.ListField(child=serializers.CharField())
        balance = serializers.CharField(allow_null=True, help_text="Decimal, as a string.")
        usage = serializers.DictField(help_text="replies, promptTokens, completionTokens, cost")
        budgets = BudgetOutput(many=True, help_text="Every budget that applies; [] for none.")

    @extend_schema(responses=OutputSerializer, summary="The caller and their chat permissions")
    def get(self, request: Request) -> Response:
        user = request_user(request)
        data = {
            "id": user.pk,
            "username": user.username,
            "email": user.email,
            "is_admin": user.is_admin,
            "permissions": user_chat_permissions(user),
            "balance": _money(balance_of(user=user)),
            "usage": usage_of(user=user),
            "budgets": [budget_fields(state) for state in budget_status(user=user)],
        }
        return Response(self.OutputSerializer(data).data)


class ThreadSettingsInput(StrictInputSerializer):
    """What a thread's creator sets, at creation or later."""

    title = StrictCharField(required=False, allow_blank=True, max_length=MAX_TITLE)
    topicIds = serializers.ListField(
        child=StrictCharField(max_length=ID_MAX_LENGTH),
        required=False,
        max_length=MAX_LIST,
    )
    sessionPrompt = StrictCharField(required=False, allow_blank=True, max_length=MAX_SESSION_PROMPT)
    aiReply = StrictBooleanField(
        required=False, help_text="The AI answers every message unless a post says reply=false."
    )


class ThreadListCreateApi(APIView):
    class InputSerializer(ThreadSettingsInput):
        id = ClientIdField(required=False)
        userIds = serializers.ListField(
            child=StrictCharField(max_length=150),
            required=False,
            max_length=MAX_LIST,
            help_text="Members to add besides the caller: user ids or usernames.",
        )

    class ListOutputSerializer(serializers.Serializer):
        threads = ThreadOutput(many=True)
        nextCursor = serializers.CharField(allow_null=True)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "topic",
                {"type": "string", "pattern": "^[^\\u0000]*$"},
                description="A topic id or slug.",
            ),
            PAGE_CURSOR_PARAM,
            PAGE_LIMIT_PARAM,
        ],
        responses=ListOutputSerializer,
        operation_id="threads_list",
        summary="The caller's threads, newest activity first",
    )
    def get(self, request: Request) -> Response:
        limit = page_limit(request.query_params)
        page = selectors.thread_list(
            user=request_user(request),
            topic=request.query_params.get("topic") or None,
            cursor=request.query_params.get("cursor") or None,
            limit=limit,
        )
        return Response(
            self.ListOutputSerializer(
                {"threads": page.threads, "nextCursor": page.next_cursor}
            ).data
        )

    @extend_schema(
        request=InputSerializer,
        responses={201: ThreadOutput, 200: ThreadOutput},
        summary="Create a thread (a retried create with the same id returns the first)",
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = serializer.validated_data
        thread, created = conversation.thread_start(
            user=request_user(request),
            title=data.get("title", ""),
            members=_user_refs(data.get("userIds", [])),
            topic_ids=data.get("topicIds", []),
            session_prompt=data.get("sessionPrompt", ""),
            thread_id=data.get("id"),
            ai_reply=data.get("aiReply", False),
        )
        return Response(
            ThreadOutput(selectors.thread_get(thread_id=thread.pk)).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class ThreadDetailApi(APIView):
    class InputSerializer(ThreadSettingsInput):
        pass

    @extend_schema(responses=ThreadOutput, summary="Read a thread")
    def get(self, request: Request, thread_id: str) -> Response:
        thread = selectors.access_thread(
            user=request_user(request), thread_id=thread_id, perm=Perm.THREAD_VIEW, prefetch=True
        )
        return Response(ThreadOutput(thread).data)

    @extend_schema(request=InputSerializer, responses=ThreadOutput, summary="Update a thread")
    def patch(self, request: Request, thread_id: str) -> Response:
        thread = selectors.access_thread(
            user=request_user(request), thread_id=thread_id, perm=Perm.THREAD_EDIT
        )
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = serializer.validated_data
        actions.thread_update(
            thread=thread,
            title=data.get("title"),
            topic_ids=data.get("topicIds"),
            session_prompt=data.get("sessionPrompt"),
            ai_reply=data.get("aiReply"),
        )
        return Response(ThreadOutput(selectors.thread_get(thread_id=thread.pk)).data)

    @extend_schema(responses={204: None}, summary="Delete a thread, its messages and files")
    def delete(self, request: Request, thread_id: str) -> Response:
        conversation.thread_remove(user=request_user(request), thread_id=thread_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ThreadReadApi(APIView):
    class InputSerializer(StrictInputSerializer):
        seq = serializers.IntegerField(
            required=False, min_value=0, help_text="The newest message seq seen; default: all."
        )

    class OutputSerializer(serializers.Serializer):
        threadId = serializers.CharField()
        lastReadSeq = serializers.IntegerField()

    @extend_schema(
        request=InputSerializer,
        responses=OutputSerializer,
        summary="Mark a thread read up to a message seq (drives unread markers)",
    )
    def post(self, request: Request, thread_id: str) -> Response:
        user = request_user(request)
        thread = selectors.access_thread(user=user, thread_id=thread_id, perm=Perm.THREAD_VIEW)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        mark = services.membership_mark_read(
            thread=thread, user=user, seq=serializer.validated_data.get("seq")
        )
        return Response(self.OutputSerializer({"threadId": thread.pk, "lastReadSeq": mark}).data)


class ThreadMembersApi(APIView):
    class InputSerializer(StrictInputSerializer):
        userIds = serializers.ListField(
            child=StrictCharField(max_length=150),
            min_length=1,
            max_length=MAX_LIST,
            help_text="User ids or usernames.",
        )

    class ListOutputSerializer(serializers.Serializer):
        members = MemberOutput(many=True)

    @extend_schema(responses=ListOutputSerializer, summary="A thread's members")
    def get(self, request: Request, thread_id: str) -> Response:
        thread = selectors.access_thread(
            user=request_user(request), thread_id=thread_id, perm=Perm.THREAD_VIEW, prefetch=True
        )
        return Response(self.ListOutputSerializer({"members": thread.memberships.all()}).data)

    @extend_schema(request=InputSerializer, responses=ThreadOutput, summary="Add members (owner)")
    def post(self, request: Request, thread_id: str) -> Response:
        thread = selectors.access_thread(
            user=request_user(request), thread_id=thread_id, perm=Perm.THREAD_EDIT
        )
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        actions.membership_add(
            thread=thread,
            actor=request_user(request),
            users=_user_refs(serializer.validated_data["userIds"]),
        )
        return Response(ThreadOutput(selectors.thread_get(thread_id=thread.pk)).data)


class ThreadMemberDetailApi(APIView):
    @extend_schema(responses={204: None}, summary="Remove a member (owner), or leave (yourself)")
    def delete(self, request: Request, thread_id: str, user_id: str) -> Response:
        thread = selectors.access_thread(
            user=request_user(request), thread_id=thread_id, perm=Perm.THREAD_EDIT
        )
        actions.membership_remove(thread=thread, actor=request_user(request), user_id=user_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TopicOutput(serializers.Serializer):
    id = serializers.CharField()
    slug = serializers.CharField()
    name = serializers.CharField()
    createdAt = serializers.DateTimeField(source="created_at")


class TopicListCreateApi(APIView):
    class InputSerializer(StrictInputSerializer):
        id = ClientIdField(required=False)
        name = StrictCharField(max_length=100)
        slug = StrictCharField(required=False, allow_blank=True, max_length=64)

    class ListOutputSerializer(serializers.Serializer):
        topics = TopicOutput(many=True)

    @extend_schema(responses=ListOutputSerializer, summary="All topics")
    def get(self, request: Request) -> Response:
        topics = selectors.topic_list(user=request_user(request))
        return Response(self.ListOutputSerializer({"topics": topics}).data)

    @extend_schema(
        request=InputSerializer,
        responses={201: TopicOutput, 200: TopicOutput},
        summary="Create a topic (a retried create with the same id returns the first)",
    )
    def post(self, request: Request) -> Response:
        require_perm(request_user(request), Perm.THREAD_EDIT)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data: dict[str, Any] = serializer.validated_data
        topic, created = services.topic_create(
            name=data["name"], slug=data.get("slug", ""), topic_id=data.get("id")
        )
        return Response(
            TopicOutput(topic).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )
