"""Events: the one module that touches the channel layer.

Every change to a thread is an event `{"type", "threadId", "seq", "data"}`. `record()` runs inside
the writer's transaction: it takes the thread's next event seq (under the thread row's lock),
appends the event to the thread's log (messaging.ThreadEvent) and publishes it after commit. So
the log and the database never disagree, `seq` follows commit order, and a client that missed
something reads it back from the log by number.

Delivery inside a server process goes through one `Hub` per event loop: it holds one channel on
the layer, joins a thread's group once for all of the process's subscribers to that thread, and
hands each event, serialised once at publish time, to the local subscribers. Stock Channels gives
every socket its own channel, queue and group membership instead.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import threading
import weakref
from collections import defaultdict
from collections.abc import Iterable
from enum import StrEnum
from typing import Any, Protocol

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from messaging.models import ThreadEvent
from threads.services import thread_seq_take

logger = logging.getLogger(__name__)

# How many events per thread a reconnecting client can catch up on; older gaps get `resync`.
EVENT_LOG_KEEP = 1000
_PRUNE_EVERY = 100


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


def thread_group(thread_id: str) -> str:
    return f"thread.{thread_id}"


def user_group(user_id: str) -> str:
    return f"user.{user_id}"


def encode(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def next_seq(thread_id: str) -> int:
    """Take the thread's next event seq. Call inside a transaction: the UPDATE locks the thread
    row until commit, which is what makes seq order the commit order."""
    return thread_seq_take(thread_id=thread_id, message=False)[1]


def record(
    *,
    thread_id: str,
    type: EventType,
    data: dict[str, Any],
    seq: int | None = None,
    also_to_users: Iterable[str] = (),
    log: bool = True,
) -> dict[str, Any]:
    """Log an event and publish it to the thread's subscribers after commit.

    Must run inside the transaction that makes the change. `seq` may be passed when the caller
    already took it (message_post takes it in the same UPDATE as the message seq).
    `also_to_users` also delivers it to those users' own streams; `log=False` is for the event
    that deletes the thread (its log goes with it).
    """
    if seq is None:
        seq = next_seq(thread_id)
    event = {"type": str(type), "threadId": thread_id, "seq": seq, "data": data}
    if settings.DEBUG or getattr(settings, "TESTING", False):
        # Fail here, not in a consumer far away, if something is not JSON.
        event = json.loads(encode(event))
    if log:
        ThreadEvent.objects.create(
            thread_id=thread_id, seq=seq, type=str(type), data=data, created_at=timezone.now()
        )
        if seq % _PRUNE_EVERY == 0:
            ThreadEvent.objects.filter(thread_id=thread_id, seq__lte=seq - EVENT_LOG_KEEP).delete()
    groups = [thread_group(thread_id), *(user_group(u) for u in also_to_users)]
    transaction.on_commit(lambda: publish(event, groups=groups))
    return event


def notify_users(
    *, thread_id: str, type: EventType, data: dict[str, Any], seq: int, user_ids: Iterable[str]
) -> None:
    """Tell users about a thread on their own streams after commit, without a new seq or a
    log entry (e.g. chatThreadAdded to someone just added, who follows nothing yet)."""
    event = {"type": str(type), "threadId": thread_id, "seq": seq, "data": data}
    groups = [user_group(u) for u in user_ids]
    transaction.on_commit(lambda: publish(event, groups=groups))


def publish_transient(*, thread_id: str, type: EventType, data: dict[str, Any], seq: int) -> None:
    """Publish a transient event (a delta) now, outside any transaction."""
    event = {"type": str(type), "threadId": thread_id, "seq": seq, "data": data}
    publish(event, groups=[thread_group(thread_id)])


def publish(event: dict[str, Any], *, groups: Iterable[str]) -> None:
    """Send an event to groups, in order, without waiting. Only record() and the streaming
    code call this.

    On the Redis pub/sub layer a transient event (a delta) goes out from the calling thread
    before this returns: one PUBLISH, where the publisher's queue cost a hand-over to its
    thread and event loop per delta (most of a delta's time from the model to the client when
    batching is off). Logged events keep the queue: their callers (on_commit) must not wait."""
    if get_channel_layer() is None:
        return
    text = encode(event)
    direct = _direct_publisher() if event["type"] in TRANSIENT_TYPES else None
    if direct is not None:
        current = _publisher_state.get("publisher")
        if current is not None and current.pending and current.pid == os.getpid():
            # Logged events still queued (the reply's "streaming" status, say) go first: they
            # and the deltas travel the same Redis channel, in the order they are published.
            current.drain(5.0)
    for group in groups:
        # `target` tells a hub subscribed to several groups which one this copy came by.
        message = {"type": "thread.event", "target": group, "event": event, "text": text}
        if direct is None:
            _publisher().submit(group, message)
            continue
        try:
            direct.publish(group, message)
        except Exception:
            # As for logged events: the text is in the live store, and the next delta's
            # offset tells a client that it missed some and must refetch.
            logger.exception("publishing %s to %s failed", event["type"], group)


class _DirectPublisher:
    """PUBLISH to channels-redis' pub/sub layer from any thread, with a plain Redis client:
    the layer's own channel name for the group and its own serialisation, so its receivers
    cannot tell the difference."""

    def __init__(self, layer: Any, address: str, prefix: str) -> None:
        import redis

        self.layer = layer
        self.client: Any = redis.Redis.from_url(address)
        self.prefix = prefix

    def publish(self, group: str, message: dict[str, Any]) -> None:
        # channels_redis.pubsub.RedisPubSubLoopLayer._get_group_channel_name
        self.client.publish(f"{self.prefix}__group__{group}", self.layer.serialize(message))


_direct_state: dict[str, Any] = {}


def _direct_publisher() -> _DirectPublisher | None:
    """The direct publisher when the layer is channels-redis' pub/sub layer on one Redis
    (sharded or other layers go through the layer itself)."""
    if "publisher" in _direct_state and _direct_state.get("pid") == os.getpid():
        return _direct_state["publisher"]
    publisher = None
    layer = get_channel_layer()
    config: dict[str, Any] = settings.CHANNEL_LAYERS.get("default", {})
    options: dict[str, Any] = config.get("CONFIG", {})
    hosts = options.get("hosts", [])
    if (
        layer is not None
        and config.get("BACKEND") == "channels_redis.pubsub.RedisPubSubChannelLayer"
        and len(hosts) == 1
    ):
        host = hosts[0]
        address = host.get("address") if isinstance(host, dict) else host
        if isinstance(address, str):
            publisher = _DirectPublisher(layer, address, str(options.get("prefix", "asgi")))
    _direct_state.update(publisher=publisher, pid=os.getpid())
    return publisher


def publish_drain(timeout: float = 5.0) -> bool:
    """Wait until every event handed to publish() has gone out; False on timeout."""
    current = _publisher_state.get("publisher")
    return True if current is None else current.drain(timeout)


class _Publisher:
    """One event loop on its own thread per process, sending events one after another.

    `async_to_sync(group_send)` per event starts an event loop and a Redis connection each
    time: a few milliseconds, which capped a worker near 300 tokens per second. Here the loop
    and its connections live as long as the process, and a single queue keeps the order in
    which events were published.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.queue: asyncio.Queue[tuple[str, dict[str, Any]]] | None = None
        self.ready = threading.Event()
        self.idle = threading.Event()
        self.idle.set()
        self.pending = 0
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="threadline-publisher", daemon=True)
        self.thread.start()
        self.ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._send_forever())

    async def _send_forever(self) -> None:
        self.queue = asyncio.Queue()
        self.ready.set()
        layer = get_channel_layer()
        while True:
            group, message = await self.queue.get()
            try:
                await layer.group_send(group, message)
            except Exception:
                # The change is committed and logged; a subscriber who missed the live copy
                # fills the gap from the log on the next event or on reconnect.
                logger.exception("publishing %s to %s failed", message["event"]["type"], group)
            finally:
                with self.lock:
                    self.pending -= 1
                    if self.pending == 0:
                        self.idle.set()

    def submit(self, group: str, message: dict[str, Any]) -> None:
        assert self.queue is not None  # noqa: S101 - set before `ready`
        with self.lock:
            self.pending += 1
            self.idle.clear()
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (group, message))

    def drain(self, timeout: float) -> bool:
        return self.idle.wait(timeout)


_publisher_state: dict[str, Any] = {}
_publisher_lock = threading.Lock()


def _publisher() -> _Publisher:
    # Made on first use in each process (a forked worker child gets its own).
    with _publisher_lock:
        current = _publisher_state.get("publisher")
        if current is None or _publisher_state.get("pid") != os.getpid():
            current = _publisher_state["publisher"] = _Publisher()
            _publisher_state["pid"] = os.getpid()
            atexit.register(current.drain, 5.0)
        return current


def log_since(*, thread_id: str, after_seq: int) -> tuple[list[dict[str, Any]], bool]:
    """The logged events of a thread after `after_seq`, oldest first, and whether the log
    still reaches back that far (False: the caller must resync)."""
    rows = list(
        ThreadEvent.objects.filter(thread_id=thread_id, seq__gt=after_seq)
        .order_by("seq")
        .values_list("seq", "type", "data")
    )
    complete = not rows or rows[0][0] == after_seq + 1
    events = [{"type": t, "threadId": thread_id, "seq": s, "data": d} for s, t, d in rows]
    return events, complete


# --- delivery inside a server process ----------------------------------------------------------


class Sink(Protocol):
    """A connection's subscription, as the hub sees it."""

    async def on_event(self, group: str, event: dict[str, Any], text: str) -> None: ...


class Hub:
    """Joins each group once per process and fans events out to local sinks."""

    def __init__(self) -> None:
        self.layer = get_channel_layer()
        # The embedded in-memory layer must know which loop its subscribers live on.
        bind = getattr(self.layer, "bind_loop", None)
        if bind is not None:
            bind(asyncio.get_running_loop())
        self.sinks: dict[str, set[Sink]] = defaultdict(set)
        self.channel: str | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def add(self, group: str, sink: Sink) -> None:
        async with self._lock:
            if self.channel is None:
                # The layer's default prefix: channels-redis' core layer reads all of a
                # process's channels with one blocking pop per prefix, and a second prefix
                # would wait behind the consumers' own reads.
                self.channel = await self.layer.new_channel()
                self._reader = asyncio.create_task(
                    self._read(self.channel), name="threadline-event-hub"
                )
            first = not self.sinks[group]
            self.sinks[group].add(sink)
            if first:
                await self.layer.group_add(group, self.channel)

    async def discard(self, group: str, sink: Sink) -> None:
        async with self._lock:
            members = self.sinks.get(group)
            if not members or sink not in members:
                return
            members.discard(sink)
            if not members:
                del self.sinks[group]
                if self.channel is not None:
                    await self.layer.group_discard(group, self.channel)

    async def _read(self, channel: str) -> None:
        while True:
            try:
                message = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("event hub receive failed; retrying")
                await asyncio.sleep(0.5)
                continue
            event = message.get("event")
            if not isinstance(event, dict):
                continue
            group = str(message.get("target"))
            for sink in list(self.sinks.get(group, ())):
                try:
                    await sink.on_event(group, event, message["text"])
                except Exception:
                    logger.exception("delivering %s failed", event.get("type"))


# Keyed weakly so a finished loop (a test's, say) takes its hub with it.
_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def hub() -> Hub:
    """The hub of the running event loop (one per server process in practice)."""
    loop = asyncio.get_running_loop()
    current = _hubs.get(loop)
    if current is None:
        current = _hubs[loop] = Hub()
    return current
