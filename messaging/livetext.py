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

    def set(self, message_id: str, text: str, kept: int = 0) -> None:
        with self.lock:
            self.texts[message_id] = text

    def get_many(self, message_ids: Iterable[str]) -> dict[str, str]:
        with self.lock:
            return {m: self.texts[m] for m in message_ids if m in self.texts}

    def drop(self, message_id: str) -> None:
        with self.lock:
            self.texts.pop(message_id, None)


# How many replies' stored lengths a process remembers; past it, it forgets them all (the next
# write of each is then a whole SET, which is always correct).
_KNOWN_LENGTHS_MAX = 10_000


class _Redis:
    def __init__(self, url: str) -> None:
        import redis

        self.client: Any = redis.Redis.from_url(url)
        # Bytes this process stored per reply. Lets a write append only the new text: a SET of
        # the whole text on every delta copied the reply over and over (quadratic in its
        # length, and the delta waited behind it).
        self.lengths: dict[str, int] = {}
        self.lock = threading.Lock()

    def set(self, message_id: str, text: str, kept: int = 0) -> None:
        key = _PREFIX + message_id
        with self.lock:
            stored = self.lengths.get(message_id)
        if kept and stored is not None:
            new = text[kept:].encode()
            # APPEND answers the key's new length: anything else (the key expired, another
            # process wrote it) means what is there is not text[:kept], so write it whole.
            if self.client.append(key, new) == stored + len(new):
                with self.lock:
                    self.lengths[message_id] = stored + len(new)
                return
        whole = text.encode()
        self.client.set(key, whole, ex=TTL_SECONDS)
        with self.lock:
            if len(self.lengths) >= _KNOWN_LENGTHS_MAX:
                self.lengths.clear()
            self.lengths[message_id] = len(whole)

    def get_many(self, message_ids: Iterable[str]) -> dict[str, str]:
        ids = list(message_ids)
        if not ids:
            return {}
        values = self.client.mget([_PREFIX + m for m in ids])
        return {m: v.decode() for m, v in zip(ids, values, strict=True) if v is not None}

    def drop(self, message_id: str) -> None:
        with self.lock:
            self.lengths.pop(message_id, None)
        self.client.delete(_PREFIX + message_id)


@cache
def _store() -> _Local | _Redis:
    return _Redis(settings.REDIS_URL) if settings.REDIS_URL else _Local()


def live_text_set(*, message_id: str, text: str, kept: int = 0) -> None:
    """Store the reply's text so far. `kept`: the first `kept` characters are what this process
    stored last time, so only the rest needs writing."""
    _store().set(message_id, text, kept)


def live_text_drop(*, message_id: str) -> None:
    _store().drop(message_id)


def live_texts(message_ids: Iterable[str]) -> dict[str, str]:
    return _store().get_many(message_ids)
