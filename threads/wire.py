"""The JSON shapes of users, threads and members, shared by the REST API and the events so a
client sees one format everywhere (camelCase keys, prefixed ids, ISO 8601 UTC times)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from threads.models import Thread, ThreadMembership


def iso(value: datetime | None) -> str | None:
    """A datetime as DRF writes it: ISO 8601, UTC as 'Z'."""
    if value is None:
        return None
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def member_json(membership: ThreadMembership) -> dict[str, Any]:
    return {
        "userId": membership.user_id,
        "username": membership.user.username,
        "role": membership.role,
        "joinedAt": iso(membership.joined_at),
        "lastReadSeq": membership.last_read_seq,
    }


def thread_json(thread: Thread) -> dict[str, Any]:
    """Expects memberships (with users) and topics prefetched, as selectors.thread_get does."""
    return {
        "id": thread.pk,
        "title": thread.title,
        "creatorId": thread.creator_id,
        "members": [member_json(m) for m in thread.memberships.all()],
        "topicIds": sorted(topic.pk for topic in thread.topics.all()),
        "sessionPrompt": thread.session_prompt,
        "aiReply": thread.ai_reply,
        "lastMessageSeq": thread.last_message_seq,
        "lastEventSeq": thread.last_event_seq,
        "createdAt": iso(thread.created_at),
        "updatedAt": iso(thread.updated_at),
        "lastActivityAt": iso(thread.last_activity_at),
    }
