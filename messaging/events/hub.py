"""Delivery inside a server process: one `Hub` per event loop.

The hub holds one channel on the layer, joins a thread's group once for all of the process's
subscribers to that thread, and hands each event, serialised once at publish time, to the local
subscribers (messaging.streams.Subscription). Stock Channels gives every socket its own channel,
queue and group membership instead.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import defaultdict
from typing import Any, Protocol

from messaging.events.publish import channel_layer

logger = logging.getLogger(__name__)


class Sink(Protocol):
    """A connection's subscription, as the hub sees it."""

    async def on_event(self, group: str, event: dict[str, Any], text: str) -> None: ...


class Hub:
    """Joins each group once per process and fans events out to local sinks."""

    def __init__(self) -> None:
        self.layer: Any = channel_layer()
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
                # would wait behind the consumers' own reads (RedisChannelLayer.receive,
                # checked against channels-redis 4.3.0).
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
