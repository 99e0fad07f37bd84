"""The delta path on a real Redis: the live text appended in place, deltas published straight to
channels-redis' pub/sub layer and received by its own subscriber."""

from __future__ import annotations

import asyncio
import importlib
import uuid

import pytest
from channels_redis.pubsub import RedisPubSubChannelLayer

from messaging import events, livetext
from tests.integration.conftest import REDIS_URL, _check_redis

# The module, not the package: `events.publish` is the function itself.
publishing = importlib.import_module("messaging.events.publish")

pytestmark = pytest.mark.integration


@pytest.fixture
def redis_url() -> str:
    _check_redis()
    return REDIS_URL


def test_the_live_text_is_appended_and_rewritten_whole_when_the_store_lost_it(
    redis_url: str,
) -> None:
    store = livetext._Redis(redis_url)
    message_id = f"msg_{uuid.uuid4().hex}"
    key = livetext._PREFIX + message_id
    store.set(message_id, "")
    store.set(message_id, "Hé", kept=0)
    store.set(message_id, "Hé, wörld", kept=2)
    assert store.get_many([message_id]) == {message_id: "Hé, wörld"}
    assert store.client.ttl(key) > 0

    store.client.delete(key)  # expired, or dropped by another process
    store.set(message_id, "Hé, wörld!", kept=9)
    assert store.get_many([message_id]) == {message_id: "Hé, wörld!"}
    assert store.client.ttl(key) > 0

    store.client.set(key, "something else")  # written by another process
    store.set(message_id, "Hé, wörld!?", kept=10)
    assert store.get_many([message_id]) == {message_id: "Hé, wörld!?"}
    store.drop(message_id)
    assert store.get_many([message_id]) == {}


def test_a_delta_published_directly_reaches_the_layers_subscribers(
    redis_url: str, settings: object
) -> None:
    prefix = f"test{uuid.uuid4().hex[:8]}"
    config = {"hosts": [{"address": redis_url}], "prefix": prefix}
    settings.CHANNEL_LAYERS = {  # type: ignore[attr-defined]
        "default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": config}
    }
    layer = RedisPubSubChannelLayer(**config)
    publishing._direct_state.clear()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(publishing, "get_channel_layer", lambda: layer)

            async def scenario() -> dict[str, object]:
                channel = await layer.new_channel()
                await layer.group_add(events.thread_group("thr_x"), channel)
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(
                    None,
                    lambda: events.publish_transient(
                        thread_id="thr_x",
                        type=events.EventType.MESSAGE_DELTA,
                        data={"messageId": "msg_1", "offset": 0, "text": "Hi"},
                        seq=7,
                    ),
                )
                message = await asyncio.wait_for(layer.receive(channel), 5)
                await layer.flush()
                return message

            message = asyncio.run(scenario())
    finally:
        publishing._direct_state.clear()
    event = {
        "type": "chatMessageDelta",
        "threadId": "thr_x",
        "seq": 7,
        "data": {"messageId": "msg_1", "offset": 0, "text": "Hi"},
    }
    assert message == {
        "type": "thread.event",
        "target": "thread.thr_x",
        "event": event,
        "text": events.encode(event),
    }
