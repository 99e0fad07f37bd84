"""The JSON shapes of users, threads and members, shared by the REST API and the events so a
client sees one format everywhere (camelCase keys, prefixed ids, ISO 8601 UTC times).

Each shape is declared once, as the output serializer below: the REST views answer with it,
the events carry its `.data`, and the OpenAPI schema is generated from the same fields, so the
document cannot drift from what is sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import cached_property
from operator import attrgetter
from typing import Any

from django.conf import settings
from rest_framework import serializers
from rest_framework.settings import api_settings

from threads.models import Thread, ThreadMembership


def iso(value: datetime | None) -> str | None:
    """A datetime as DRF writes it: ISO 8601, UTC as 'Z'."""
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _same(value: Any) -> Any:
    return value


def _fast_representation(field: serializers.Field) -> Callable[[Any], Any]:
    """What `field.to_representation` computes, without DRF's per-call overhead where the
    field's class does not change how the value is written."""
    writer = type(field).to_representation
    if writer is serializers.CharField.to_representation:
        return str
    if writer is serializers.IntegerField.to_representation:
        return int
    if writer is serializers.JSONField.to_representation and not field.binary:  # type: ignore[attr-defined]
        return _same
    if (
        writer is serializers.DateTimeField.to_representation
        and getattr(field, "format", api_settings.DATETIME_FORMAT) == api_settings.DATETIME_FORMAT
        and api_settings.DATETIME_FORMAT.lower() == "iso-8601"
    ):
        enforce = field.enforce_timezone  # type: ignore[attr-defined]
        # DRF converts to the current time zone, which Threadline never activates: with
        # TIME_ZONE=UTC a UTC value (all the ORM returns) is written as it is, skipping the
        # thread-local look-up that was most of the cost.
        as_is = settings.TIME_ZONE == "UTC" and not hasattr(field, "timezone")

        def write_datetime(value: Any) -> Any:
            if isinstance(value, str):
                return value
            return iso(value if as_is and value.tzinfo is UTC else enforce(value))

        return write_datetime
    if isinstance(field, serializers.ListField) and (
        type(field.child).to_representation is serializers.CharField.to_representation
    ):
        return lambda value: [None if item is None else str(item) for item in value]
    return field.to_representation


class WireSerializer(serializers.Serializer):
    """An output serializer for the shapes written many times a request (every message of a
    history page, every member of every thread). DRF's generic walk over the declared fields
    cost ten times a hand-written dict (8 ms for a 200-message page); this walks the same
    declared fields with a plan made once per bound serializer, so the fields stay the one
    declaration of the shape. tests/threads/test_wire.py checks that it writes exactly what
    DRF's own to_representation writes."""

    @cached_property
    def _plan(self) -> list[tuple[str, Callable[[Any], Any], Callable[[Any], Any]]]:
        plan: list[tuple[str, Callable[[Any], Any], Callable[[Any], Any]]] = []
        for field in self._readable_fields:
            getter = attrgetter(".".join(field.source_attrs)) if field.source_attrs else _same
            plan.append((str(field.field_name), getter, _fast_representation(field)))
        return plan

    def to_representation(self, instance: Any) -> dict[str, Any]:
        if isinstance(instance, Mapping):  # DRF's walk reads keys as well as attributes
            return dict(super().to_representation(instance))
        out: dict[str, Any] = {}
        for name, getter, write in self._plan:
            value = getter(instance)
            out[name] = None if value is None else write(value)
        return out


class MemberOutput(WireSerializer):
    userId = serializers.CharField(source="user_id")
    username = serializers.CharField(source="user.username")
    role = serializers.ChoiceField(choices=ThreadMembership.Role.choices)
    joinedAt = serializers.DateTimeField(source="joined_at")
    lastReadSeq = serializers.IntegerField(
        source="last_read_seq", help_text="The newest message seq this member has read."
    )


class ThreadOutput(WireSerializer):
    """Expects memberships (with users) and topics prefetched, as selectors.thread_get does."""

    id = serializers.CharField()
    title = serializers.CharField(allow_blank=True)
    creatorId = serializers.CharField(source="creator_id", allow_null=True)
    members = MemberOutput(source="memberships", many=True)
    topicIds = serializers.SerializerMethodField()
    sessionPrompt = serializers.CharField(source="session_prompt", allow_blank=True)
    aiReply = serializers.BooleanField(source="ai_reply")
    lastMessageSeq = serializers.IntegerField(source="last_message_seq")
    lastEventSeq = serializers.IntegerField(source="last_event_seq")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")
    lastActivityAt = serializers.DateTimeField(source="last_activity_at")

    def get_topicIds(self, thread: Thread) -> list[str]:
        return sorted(topic.pk for topic in thread.topics.all())


# One bound instance each: to_representation keeps no per-call state, and building a serializer
# deep-copies its declared fields, which an event published on every change need not pay.
_MEMBER = MemberOutput()
_THREAD = ThreadOutput()


def member_json(membership: ThreadMembership) -> dict[str, Any]:
    return _MEMBER.to_representation(membership)


def thread_json(thread: Thread) -> dict[str, Any]:
    """Expects memberships (with users) and topics prefetched, as selectors.thread_get does."""
    return _THREAD.to_representation(thread)
