"""The catalog of events: every type, what it means and what its `data` holds, and the one
JSON text of an event. Pure data: no database, no channel layer."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    THREAD_ADDED = "chatThreadAdded"
    THREAD_UPDATE = "chatThreadUpdate"
    THREAD_DELETED = "chatThreadDeleted"
    MEMBER_ADDED = "chatMemberAdded"
    MEMBER_REMOVED = "chatMemberRemoved"
    MESSAGE_ADDED = "chatMessageAdded"
    MESSAGE_UPDATED = "chatMessageUpdated"
    MESSAGE_DELETED = "chatMessageDeleted"
    MESSAGE_DELTA = "chatMessageDelta"
    MESSAGE_COMPLETED = "chatMessageCompleted"
    AGENT_STEP = "chatAgentStep"
    ARTIFACT_ADDED = "chatArtifactAdded"
    RESYNC = "resync"


# Not logged and not numbered: a delta says where its text goes (messageId, offset), and the
# stored message is the record. Their `seq` is the thread's last logged seq when sent.
TRANSIENT_TYPES = frozenset({EventType.MESSAGE_DELTA})


# What each event means and what its `data` holds; served at /api/v1/events/types/.
EVENT_DOCS: dict[EventType, tuple[str, str]] = {
    EventType.THREAD_ADDED: (
        "A thread you are in was created, or you were added to one. Sent to you without "
        "subscribing.",
        "the thread, as GET /api/v1/threads/{id}/ returns it",
    ),
    EventType.THREAD_UPDATE: ("A thread's title, topics or session prompt changed.", "the thread"),
    EventType.THREAD_DELETED: (
        "The thread was deleted; the subscription ends.",
        '{"id": threadId}',
    ),
    EventType.MEMBER_ADDED: ("Someone joined the thread.", "the member (userId, username, role)"),
    EventType.MEMBER_REMOVED: (
        "Someone left or was removed. If it is you, this is the last event you get from the "
        "thread.",
        '{"userId": ...}',
    ),
    EventType.MESSAGE_ADDED: ("A message was posted.", "the message"),
    EventType.MESSAGE_UPDATED: ("A message was edited or its status changed.", "the message"),
    EventType.MESSAGE_DELETED: ("A message was deleted.", '{"id": messageId, "seq": messageSeq}'),
    EventType.MESSAGE_DELTA: (
        "Text the AI just wrote. Append `text` at character `offset` of the message; an offset "
        "past what you hold means you missed text: refetch the message. Not logged: a client "
        "that reconnects reads the saved partial text and carries on from the next delta.",
        '{"messageId": ..., "offset": 120, "text": "..."}',
    ),
    EventType.MESSAGE_COMPLETED: (
        "An AI reply finished (complete, failed or cancelled): the final message and its usage.",
        '{"message": {...}, "usage": {"promptTokens", "completionTokens", "cost"}}',
    ),
    EventType.AGENT_STEP: (
        "The crew writing an AI reply made progress: an agent started or finished, or used a "
        "tool; `waiting` while the reply waits for a free crew.",
        '{"messageId", "runId", "agent": "analyst", "step": "started|tool|finished|waiting", '
        '"tool": "make_chart", "detail": "..."}',
    ),
    EventType.ARTIFACT_ADDED: (
        "The crew saved an artifact (chart, table, summary, file) with the reply.",
        "the artifact, as GET /api/v1/artifacts/{id}/ returns it",
    ),
    EventType.RESYNC: (
        "You asked to resume from a point older than the event log keeps: refetch the thread "
        "over REST, then carry on from this event's seq.",
        '{"reason": ...}',
    ),
}


def event_make(*, type: EventType | str, thread_id: str, seq: int, data: Any) -> dict[str, Any]:
    """An event in its one shape: `{"type", "threadId", "seq", "data"}`."""
    return {"type": str(type), "threadId": thread_id, "seq": seq, "data": data}


def encode(event: dict[str, Any]) -> str:
    """The event's JSON text, as every subscriber receives it (compact, UTF-8 kept)."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)
