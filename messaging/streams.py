"""A connection's subscription to the event stream, shared by the WebSocket and SSE doors.

It holds the rules every door must keep: access is checked when subscribing; a client resumes
from the last seq it saw and gets exactly the events it missed, then live ones, nothing twice
and nothing lost; a gap in live delivery is filled from the log; a removed member or a deleted
thread ends the subscription at that event.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async

from messaging import events
from messaging.events import EventType
from threads.errors import Invalid
from threads.models import Thread, User
from threads.permissions import Perm, has_perm, require_perm
from threads.selectors import access_thread

logger = logging.getLogger(__name__)

MAX_THREADS_PER_CONNECTION = 200
_MESSAGE_EVENTS = {
    EventType.MESSAGE_ADDED,
    EventType.MESSAGE_UPDATED,
    EventType.MESSAGE_DELETED,
    EventType.MESSAGE_DELTA,
    EventType.MESSAGE_COMPLETED,
}


@dataclass
class _ThreadState:
    last: int = 0
    # Live events that arrive while the subscription is still catching up from the log.
    pending: list[tuple[dict[str, Any], str]] | None = field(default_factory=list)


def _stream_access(user: User, thread_id: str) -> tuple[str, bool]:
    """(canonical thread id, may see message events) or the one NotFound / Forbidden."""
    thread = access_thread(user=user, thread_id=thread_id, perm=Perm.THREAD_STREAM)
    return thread.pk, has_perm(user, Perm.MESSAGE_STREAM)


def _current_seq(thread_id: str) -> int:
    return int(Thread.objects.filter(pk=thread_id).values_list("last_event_seq", flat=True).get())


def _may_follow(user: User, thread_id: str) -> bool:
    """Still allowed to follow the thread (checked again after a gap, which is cheap enough)."""
    return Thread.objects.filter(pk=thread_id, memberships__user=user).exists() or user.is_admin


class Subscription:
    """One connection's events. `send` writes one JSON text frame to the client."""

    def __init__(self, *, user: User, send: Callable[[str], Awaitable[None]]) -> None:
        self.user = user
        self.send = send
        self.threads: dict[str, _ThreadState] = {}
        self.messages_allowed: dict[str, bool] = {}
        # The last seq sent per thread, kept after a subscription ends, so the copy of the
        # ending event that also comes by the user's own stream is not sent twice.
        self.delivered: dict[str, int] = {}
        self.closed = False

    # --- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Join the user's own stream (chatThreadAdded arrives without subscribing)."""
        await database_sync_to_async(require_perm)(self.user, Perm.THREAD_STREAM)
        await events.hub().add(events.user_group(self.user.pk), self)

    async def close(self) -> None:
        self.closed = True
        hub = events.hub()
        await hub.discard(events.user_group(self.user.pk), self)
        for thread_id in list(self.threads):
            await hub.discard(events.thread_group(thread_id), self)
        self.threads.clear()

    # --- subscribe / unsubscribe ------------------------------------------------------------

    async def subscribe(
        self,
        thread_id: str,
        last_seq: int | None = None,
        *,
        announce: Callable[[str, int], Awaitable[None]] | None = None,
    ) -> str:
        """Follow a thread from `last_seq` (exclusive), or from now. Returns the canonical id.

        `announce(thread_id, current_seq)` runs once access is granted, before any catch-up
        event is sent, so a door can acknowledge the subscription in order."""
        if last_seq is not None and last_seq < 0:
            raise Invalid("lastSeq must be 0 or more.", fields={"lastSeq": ["Out of range."]})
        canonical, messages_allowed = await database_sync_to_async(_stream_access)(
            self.user, thread_id
        )
        if canonical not in self.threads and len(self.threads) >= MAX_THREADS_PER_CONNECTION:
            raise Invalid(
                f"At most {MAX_THREADS_PER_CONNECTION} threads per connection.",
                fields={"threadId": ["Too many subscriptions."]},
            )
        if canonical in self.threads:
            await self.unsubscribe(canonical)
        state = _ThreadState()
        self.threads[canonical] = state
        self.messages_allowed[canonical] = messages_allowed
        # Join first, then read where the thread is: an event committed in between is either
        # in the log read below or buffered in `pending`, and the seq check drops the overlap.
        await events.hub().add(events.thread_group(canonical), self)
        current = await database_sync_to_async(_current_seq)(canonical)
        if announce is not None:
            await announce(canonical, current)
        if last_seq is None or last_seq >= current:
            state.last = current
        else:
            state.last = last_seq
            await self._catch_up(canonical, state, upto=None)
        await self._drain_pending(canonical, state)
        return canonical

    async def unsubscribe(self, thread_id: str) -> bool:
        state = self.threads.pop(thread_id, None)
        self.messages_allowed.pop(thread_id, None)
        if state is None:
            return False
        await events.hub().discard(events.thread_group(thread_id), self)
        return True

    # --- delivery -------------------------------------------------------------------------------

    async def on_event(self, group: str, event: dict[str, Any], text: str) -> None:
        if self.closed:
            return
        thread_id = str(event.get("threadId"))
        if group.startswith("user."):
            # The same event also comes by the thread's group when we follow (or followed) the
            # thread: send it only if neither copy went out yet.
            seq = event.get("seq")
            already = isinstance(seq, int) and seq <= self.delivered.get(thread_id, -1)
            if thread_id not in self.threads and not already:
                await self.send(text)
            return
        state = self.threads.get(thread_id)
        if state is None:
            return
        if state.pending is not None:
            state.pending.append((event, text))
            return
        await self._deliver(thread_id, state, event, text)

    async def _deliver(
        self, thread_id: str, state: _ThreadState, event: dict[str, Any], text: str
    ) -> None:
        if event.get("type") in events.TRANSIENT_TYPES:
            # Unnumbered: placed by its own offset, never deduplicated or gap-filled by seq.
            if self.messages_allowed.get(thread_id, False):
                await self.send(text)
            return
        seq = int(event["seq"])
        if seq <= state.last:
            return  # already delivered (from the log, or a second copy)
        if seq > state.last + 1:
            # A live event overtook one published a moment later by another process: take
            # the missing ones from the log, in order, before this one.
            if not await database_sync_to_async(_may_follow)(self.user, thread_id):
                await self.unsubscribe(thread_id)
                return
            await self._catch_up(thread_id, state, upto=seq)
            if thread_id not in self.threads:
                return
        await self._emit(thread_id, state, event, text)

    async def _catch_up(self, thread_id: str, state: _ThreadState, *, upto: int | None) -> None:
        """Deliver logged events after state.last (and before `upto`), or a resync."""
        missed, complete = await database_sync_to_async(
            lambda: events.log_since(thread_id=thread_id, after_seq=state.last)
        )()
        if not complete:
            newest = missed[-1]["seq"] if missed else state.last
            resync = {
                "type": str(EventType.RESYNC),
                "threadId": thread_id,
                "seq": newest,
                "data": {"reason": "The events you missed are older than the log keeps."},
            }
            await self.send(events.encode(resync))
            state.last = newest
            return
        for event in missed:
            if upto is not None and event["seq"] >= upto:
                break
            await self._emit(thread_id, state, event, events.encode(event))
            if thread_id not in self.threads:
                return

    async def _drain_pending(self, thread_id: str, state: _ThreadState) -> None:
        while state.pending:
            event, text = state.pending.pop(0)
            await self._deliver(thread_id, state, event, text)
            if thread_id not in self.threads:
                return
        state.pending = None

    async def _emit(
        self, thread_id: str, state: _ThreadState, event: dict[str, Any], text: str
    ) -> None:
        state.last = int(event["seq"])
        self.delivered[thread_id] = state.last
        kind = event.get("type")
        if kind not in _MESSAGE_EVENTS or self.messages_allowed.get(thread_id, False):
            await self.send(text)
        ends = kind == EventType.THREAD_DELETED or (
            kind == EventType.MEMBER_REMOVED and event["data"].get("userId") == self.user.pk
        )
        if ends:
            await self.unsubscribe(thread_id)
