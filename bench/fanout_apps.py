"""The two baselines of bench/fanout.py, as ASGI apps.

`floor`: a bare ASGI app that keeps its sockets in a set and writes each broadcast to all of
them: the least any server can do. `stock`: the usual Channels way, a consumer per socket in one
group and `group_send` per broadcast, on the same channel layer as Threadline.
Both take `POST /broadcast` (the body is the frame) and answer `GET /healthz`.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")

_floor_clients: set[Any] = set()


async def _read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _reply(send: Any, status: int = 200, body: bytes = b"ok") -> None:
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def floor(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            pass
        return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        _floor_clients.add(send)
        try:
            while (await receive())["type"] != "websocket.disconnect":
                pass
        finally:
            _floor_clients.discard(send)
        return
    if scope["path"] == "/broadcast":
        text = (await _read_body(receive)).decode()
        for client in list(_floor_clients):
            await client({"type": "websocket.send", "text": text})
    await _reply(send)


def _stock_app() -> Any:
    import django

    django.setup()
    from channels.generic.websocket import AsyncWebsocketConsumer
    from channels.layers import get_channel_layer
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.urls import path

    class StockConsumer(AsyncWebsocketConsumer):
        async def connect(self) -> None:
            await self.channel_layer.group_add("bench", self.channel_name)
            await self.accept()

        async def disconnect(self, code: int) -> None:
            await self.channel_layer.group_discard("bench", self.channel_name)

        async def bench_message(self, event: dict[str, Any]) -> None:
            await self.send(text_data=event["text"])

    async def http(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["path"] == "/broadcast":
            text = (await _read_body(receive)).decode()
            await get_channel_layer().group_send("bench", {"type": "bench.message", "text": text})
        await _reply(send)

    return ProtocolTypeRouter(
        {"http": http, "websocket": URLRouter([path("ws/", StockConsumer.as_asgi())])}
    )


class _Lazy:
    """Set Django up only when the stock app is actually served."""

    app: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                pass
            return
        if self.app is None:
            self.app = _stock_app()
        await self.app(scope, receive, send)


stock = _Lazy()
