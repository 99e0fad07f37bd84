"""The text of AI replies still being written, as of the last delta sent.

The worker writes here before it publishes each delta, and reads of a streaming message (REST,
history pages) show this text. So a client that subscribes and then fetches the message holds
every character of every delta it did not receive: nothing missing, and offsets drop overlaps.
The database copy is saved less often (STREAM_SAVE_MS) and is what survives a restart.

Redis (REDIS_URL) when the worker is another process; a dict when it is this one (embedded).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from functools import cache
from typing import Any

from django.conf import settings

TTL_SECONDS = 3600
_PREFIX = "threadline:live:"


class _Local:
    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        self.lock = threading.Lock()

    def set(self, message_id: str, text: str) -> None:
        with self.lock:
            self.texts[message_id] = text

    def get_many(self, message_ids: Iterable[str]) -> dict[str, str]:
        with self.lock:
            return {m: self.texts[m] for m in message_ids if m in self.texts}

    def drop(self, message_id: str) -> None:
        with self.lock:
            self.texts.pop(message_id, None)


class _Redis:
    def __init__(self, url: str) -> None:
        import redis

        self.client: Any = redis.Redis.from_url(url)

    def set(self, message_id: str, text: str) -> None:
        self.client.set(_PREFIX + message_id, text.encode(), ex=TTL_SECONDS)

    def get_many(self, message_ids: Iterable[str]) -> dict[str, str]:
        ids = list(message_ids)
        if not ids:
            return {}
        values = self.client.mget([_PREFIX + m for m in ids])
        return {m: v.decode() for m, v in zip(ids, values, strict=True) if v is not None}

    def drop(self, message_id: str) -> None:
        self.client.delete(_PREFIX + message_id)


@cache
def _store() -> _Local | _Redis:
    return _Redis(settings.REDIS_URL) if settings.REDIS_URL else _Local()


def live_text_set(*, message_id: str, text: str) -> None:
    _store().set(message_id, text)


def live_text_drop(*, message_id: str) -> None:
    _store().drop(message_id)


def live_texts(message_ids: Iterable[str]) -> dict[str, str]:
    return _store().get_many(message_ids)
