"""The JSON shape of a message, shared by the REST API and the events.

Declared once, as MessageOutput: the REST views answer with it, the events carry what
`message_json` makes with it, and the OpenAPI schema is generated from the same fields.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rest_framework import serializers

from messaging.models import Message
from threads.wire import WireSerializer

if TYPE_CHECKING:
    from messaging.selectors import MessageRow


class MessageOutput(WireSerializer):
    """A Message or a history page's MessageRow: both carry the same attributes."""

    id = serializers.CharField()
    threadId = serializers.CharField(source="thread_id")
    seq = serializers.IntegerField()
    userId = serializers.CharField(
        source="author_id", allow_null=True, help_text="null for the AI's messages."
    )
    text = serializers.CharField(allow_blank=True)
    fileIds = serializers.ListField(source="file_ids", child=serializers.CharField())
    meta = serializers.JSONField()
    status = serializers.ChoiceField(choices=Message.Status.choices)
    edited = serializers.BooleanField()
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")


# One bound instance: to_representation keeps no per-call state, and building a serializer
# deep-copies its declared fields, which an event published on every change need not pay.
_MESSAGE = MessageOutput()


def message_json(message: Message | MessageRow) -> dict[str, Any]:
    return _MESSAGE.to_representation(message)
