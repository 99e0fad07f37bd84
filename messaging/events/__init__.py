"""Events: the one package that touches the channel layer.

Every change to a thread is an event `{"type", "threadId", "seq", "data"}`:

- `catalog`: the event types, what each means (served at /api/v1/events/types/), the one JSON text;
- `log`: `record()` numbers and logs an event inside the writer's transaction and publishes it
  after commit; `log_since()` reads back what a reconnecting client missed;
- `publish`: sending to the channel layer (after commit, or at once for deltas);
- `hub`: delivery inside a server process, one channel and one group membership per thread for
  all of the process's subscribers.

Callers import from here (`from messaging import events`; `events.record(...)`). The functions
`publish` and `hub` share their modules' names, so `events.publish` and `events.hub` are the
functions; to reach the modules themselves (a test's monkeypatch, say) use
`importlib.import_module("messaging.events.publish")`.
"""

from __future__ import annotations

from messaging.events.catalog import EVENT_DOCS, TRANSIENT_TYPES, EventType, encode, event_make
from messaging.events.hub import Hub, Sink, hub
from messaging.events.log import log_since, next_seq, record
from messaging.events.publish import (
    channel_layer,
    notify_users,
    publish,
    publish_drain,
    publish_on_commit,
    publish_transient,
    thread_group,
    user_group,
)

__all__ = [
    "EVENT_DOCS",
    "TRANSIENT_TYPES",
    "EventType",
    "Hub",
    "Sink",
    "channel_layer",
    "encode",
    "event_make",
    "hub",
    "log_since",
    "next_seq",
    "notify_users",
    "publish",
    "publish_drain",
    "publish_on_commit",
    "publish_transient",
    "record",
    "thread_group",
    "user_group",
]
