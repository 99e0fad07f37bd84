"""The JSON shape of a message, shared by the REST API and the events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from threads.wire import iso

if TYPE_CHECKING:
    from messaging.models import Message
    from messaging.selectors import MessageRow


def message_json(message: Message | MessageRow) -> dict[str, Any]:
    return {
        "id": message.id,
        "threadId": message.thread_id,
        "seq": message.seq,
        "userId": message.author_id,
        "text": message.text,
        "fileIds": message.file_ids,
        "meta": message.meta,
        "status": message.status,
        "edited": message.edited,
        "createdAt": iso(message.created_at),
        "updatedAt": iso(message.updated_at),
    }
