"""The embedded profile: a Celery worker and the stale-run reaper inside the server process, and
an in-memory channel layer that is safe to call from the worker's thread.

Started from asgi.py (never from AppConfig.ready, or `migrate` would start workers too) when the
broker is `memory://`, so `make run` serves streamed AI replies with nothing else running.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from channels.layers import InMemoryChannelLayer
from django.conf import settings

logger = logging.getLogger(__name__)

# With RUN_STALE_SECONDS (5) this tells clients of a dead worker within about 7 s.
REAP_EVERY_SECONDS = 2.0


class ThreadSafeInMemoryChannelLayer(InMemoryChannelLayer):
    """InMemoryChannelLayer, with every call made from another event loop (the publisher's,
    the embedded worker's) forwarded onto the loop the subscribers live on, which the event hub
    binds. The stock layer is not thread-safe: a group_send from another thread reaches the
    server's loop only by accident, late.

    Only the layer's public coroutines are wrapped; checked against channels 4.3.2 (requirements:
    channels>=4.3,<4.4). Its users are in messaging.events, the package that touches the layer."""

    server_loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.server_loop = loop

    def _target(self) -> asyncio.AbstractEventLoop | None:
        target = self.server_loop
        if target is None or target.is_closed() or target is asyncio.get_running_loop():
            return None
        return target

    async def _run(self, coro_fn: Any, *args: Any, **kwargs: Any) -> Any:
        target = self._target()
        if target is None:
            return await coro_fn(*args, **kwargs)
        future = asyncio.run_coroutine_threadsafe(coro_fn(*args, **kwargs), target)
        return await asyncio.wrap_future(future)

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await self._run(super().send, channel, message)

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await self._run(super().group_send, group, message)

    async def group_add(self, group: str, channel: str) -> None:
        await self._run(super().group_add, group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        await self._run(super().group_discard, group, channel)


def _reap_forever() -> None:
    from django.db import close_old_connections

    from agents.services import runs_reap_stale

    while True:
        time.sleep(REAP_EVERY_SECONDS)
        try:
            close_old_connections()
            handled = runs_reap_stale()
            if handled:
                logger.warning("re-ran or failed %d replies whose worker stopped", handled)
        except Exception:
            logger.exception("reaping stale runs failed")


_reaper: threading.Thread | None = None
_reaper_lock = threading.Lock()


def start_reaper() -> threading.Thread:
    """Start this process's reaper thread, once however often it is called."""
    global _reaper
    with _reaper_lock:
        if _reaper is None:
            _reaper = threading.Thread(target=_reap_forever, name="threadline-reaper", daemon=True)
            _reaper.start()
        return _reaper


def start_worker() -> threading.Thread:
    """A Celery worker on a daemon thread of this process (thread pool, no heartbeats)."""
    from chatproject.celery import app

    worker = app.WorkController(
        queues=["celery", settings.CREW_QUEUE],
        pool_cls="threads",
        concurrency=settings.EMBEDDED_WORKER_CONCURRENCY,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel="WARNING",
    )
    thread = threading.Thread(target=worker.start, name="threadline-worker", daemon=True)
    thread.start()
    from agents.llm import providers_warm_up_in_background

    providers_warm_up_in_background()
    logger.info("embedded Celery worker started (memory broker)")
    return thread
