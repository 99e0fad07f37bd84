"""A load generator for bench/streaming.py: an OpenAI-compatible chat endpoint that streams
tokens at a fixed rate. The model name says how: `rate-1000-n3000` is 3,000 tokens at 1,000/s
(`rate-max-n3000`: as fast as it can). Each token is ` t<CLOCK_MONOTONIC ns>`, so a client on
this machine can tell how long the token took to reach it. Run with uvicorn."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any


async def _body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"].endswith("/models"):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"data": []}'})
        return
    request = json.loads(await _body(receive))
    _, rate, count = request["model"].split("-")
    total = int(count[1:])
    interval = 0.0 if rate == "max" else 1.0 / int(rate)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
    )
    start = time.monotonic()
    for i in range(total):
        if interval:
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        chunk = {
            "id": "bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": request["model"],
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": f" t{time.monotonic_ns()}"},
                    "finish_reason": None,
                }
            ],
        }
        await send(
            {
                "type": "http.response.body",
                "body": f"data: {json.dumps(chunk)}\n\n".encode(),
                "more_body": True,
            }
        )
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
