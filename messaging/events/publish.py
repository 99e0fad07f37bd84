"""Publishing events to the channel layer: the one module that sends on it (the hub, next door,
is the one that receives).

An event goes to groups: a thread's (`thread.<id>`, everyone following the thread) and users'
own (`user.<id>`, for news about a thread they do not follow yet). Logged events are sent after
commit, in order, by one publisher thread per process; a delta on channels-redis' pub/sub layer
goes out at once from the calling thread, with a plain Redis PUBLISH.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings
from django.db import transaction
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from messaging.events.catalog import TRANSIENT_TYPES, EventType, encode, event_make

logger = logging.getLogger(__name__)

# The channels-redis release that the code below which depends on its internals (the group
# channel name and the message serialisation of the pub/sub layer) was checked against: see
# requirements.txt (channels-redis>=4.3,<4.4). Re-check those lines when the pin moves.
CHANNELS_REDIS_CHECKED = "4.3.0"

# What a Redis restart raises at a publisher; anything else is a bug and is not retried.
CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
# How long a logged event is retried through a layer outage before it is given up (it stays in
# the event log, so a client that reconnects still gets it).
PUBLISH_RETRY_SECONDS = 60.0


def thread_group(thread_id: str) -> str:
    return f"thread.{thread_id}"


def user_group(user_id: str) -> str:
    return f"user.{user_id}"


def channel_layer() -> BaseChannelLayer | None:
    """The process's channel layer (None when none is configured). The one place that asks
    Channels for it: the publisher and the hub both go through here."""
    return get_channel_layer()


def publish_on_commit(event: dict[str, Any], *, groups: Iterable[str]) -> None:
    """Publish an event to groups once the current transaction commits (at once outside one)."""
    targets = list(groups)
    transaction.on_commit(lambda: publish(event, groups=targets))


def notify_users(
    *, thread_id: str, type: EventType, data: dict[str, Any], seq: int, user_ids: Iterable[str]
) -> None:
    """Tell users about a thread on their own streams after commit, without a new seq or a
    log entry (e.g. chatThreadAdded to someone just added, who follows nothing yet)."""
    event = event_make(type=type, thread_id=thread_id, seq=seq, data=data)
    publish_on_commit(event, groups=[user_group(u) for u in user_ids])


def publish_transient(*, thread_id: str, type: EventType, data: dict[str, Any], seq: int) -> None:
    """Publish a transient event (a delta) now, outside any transaction."""
    event = event_make(type=type, thread_id=thread_id, seq=seq, data=data)
    publish(event, groups=[thread_group(thread_id)])


def publish(event: dict[str, Any], *, groups: Iterable[str]) -> None:
    """Send an event to groups, in order, without waiting. Only record() and the streaming
    code call this (through publish_on_commit and publish_transient).

    On the Redis pub/sub layer a transient event (a delta) goes out from the calling thread
    before this returns: one PUBLISH, where the publisher's queue cost a hand-over to its
    thread and event loop per delta (most of a delta's time from the model to the client when
    batching is off). Logged events keep the queue: their callers (on_commit) must not wait."""
    if channel_layer() is None:
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


def publish_drain(timeout: float = 5.0) -> bool:
    """Wait until every event handed to publish() has gone out; False on timeout."""
    current = _publisher_state.get("publisher")
    return True if current is None else current.drain(timeout)


# --- the direct path for deltas (relies on channels-redis internals) ----------------------------


class _DirectPublisher:
    """PUBLISH to channels-redis' pub/sub layer from any thread, with a plain Redis client:
    the layer's own channel name for the group and its own serialisation, so its receivers
    cannot tell the difference.

    Copies channels-redis internals, checked against CHANNELS_REDIS_CHECKED (4.3.0):
    `RedisPubSubLoopLayer._get_group_channel_name` (`f"{prefix}__group__{group}"`) and
    `RedisPubSubChannelLayer.serialize`. tests/integration/test_redis_delta_path.py fails if a
    release changes either."""

    def __init__(self, layer: Any, address: str, prefix: str) -> None:
        import redis

        self.layer = layer
        self.client: Any = redis.Redis.from_url(address)
        self.prefix = prefix

    def publish(self, group: str, message: dict[str, Any]) -> None:
        # channels_redis.pubsub.RedisPubSubLoopLayer._get_group_channel_name (channels-redis 4.3.0)
        channel, payload = f"{self.prefix}__group__{group}", self.layer.serialize(message)
        try:
            self.client.publish(channel, payload)
        except CONNECTION_ERRORS:
            # After a Redis restart the pooled connection fails once; redis-py connects anew
            # on the next command. A delta is not worth more than one more try: a client that
            # misses one sees the gap in the next delta's offset and refetches.
            self.client.publish(channel, payload)


_direct_state: dict[str, Any] = {}


def _direct_publisher() -> _DirectPublisher | None:
    """The direct publisher when the layer is channels-redis' pub/sub layer on one Redis
    (sharded or other layers go through the layer itself)."""
    if "publisher" in _direct_state and _direct_state.get("pid") == os.getpid():
        return _direct_state["publisher"]
    publisher = None
    layer = channel_layer()
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
            # The layer's default prefix, as channels-redis 4.3.0 sets it in its constructor.
            publisher = _DirectPublisher(layer, address, str(options.get("prefix", "asgi")))
    _direct_state.update(publisher=publisher, pid=os.getpid())
    return publisher


# --- the publisher thread -----------------------------------------------------------------------


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
        layer: Any = channel_layer()
        while True:
            group, message = await self.queue.get()
            try:
                await self._send(layer, group, message)
            except Exception:
                # The change is committed and logged; a subscriber who missed the live copy
                # fills the gap from the log on the next event or on reconnect.
                logger.exception("publishing %s to %s failed", message["event"]["type"], group)
            finally:
                with self.lock:
                    self.pending -= 1
                    if self.pending == 0:
                        self.idle.set()

    async def _send(self, layer: Any, group: str, message: dict[str, Any]) -> None:
        """Send one logged event, through a Redis restart: the layer's connection fails the
        first command after one (the terminal event of a reply was lost that way, and the
        reply looked stuck to every open socket), so a connection error is retried until the
        layer is back or PUBLISH_RETRY_SECONDS have passed. Later events wait behind it, which
        keeps their order."""
        deadline = time.monotonic() + PUBLISH_RETRY_SECONDS
        pause = 0.1
        while True:
            try:
                await layer.group_send(group, message)
                return
            except CONNECTION_ERRORS as exc:
                if time.monotonic() + pause > deadline:
                    raise
                logger.warning(
                    "publishing %s to %s: %s; retrying", message["event"]["type"], group, exc
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

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
