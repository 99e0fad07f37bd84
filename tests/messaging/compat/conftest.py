"""Shared by the compat protocol tests: tokens for the cast, the scripted test LLM, the bundled
model put back after transactional flushes, and an ASGI driver for streamed HTTP answers.

httpx's ASGITransport and Django's test client wait for a whole response, so streams (SSE) are
driven by hand: an http scope, the request body, then the `http.response.body` chunks read
from a queue until the test has what it needs and sends `http.disconnect`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from asgiref.sync import sync_to_async
from django.apps import apps
from django.db import connections

from chatproject.asgi import application
from tests.agents.conftest import scripted_llm  # noqa: F401 - the fixture, shared
from tests.conftest import Cast
from threads import services as thread_services

T = TypeVar("T")
TIMEOUT = 5.0
QUIET = 0.3
Headers = Sequence[tuple[bytes, bytes]]


async def act(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run ORM code and services off the loop; their on_commit publishes as in production."""
    return await sync_to_async(fn)(*args, **kwargs)


@pytest.fixture(autouse=True)
def bundled_model(db: None) -> None:
    """Transactional tests flush the rows migrations made; put the bundled model back, with
    the migration's own code (a no-op where it is there)."""
    migration = importlib.import_module("agents.migrations.0002_default_model")
    migration.create_default_model(apps, None)


@pytest.fixture
def tokens(cast: Cast) -> dict[str, str]:
    return {
        user.username: thread_services.token_issue(user=user)[1]
        for user in (cast.alice, cast.bob, cast.charlie, cast.admin)
    }


@dataclass
class SseEvent:
    event: str | None = None
    data: str | None = None
    id: str | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> Any:
        assert self.data is not None
        return json.loads(self.data)


def parse_sse(text: str) -> SseEvent:
    block = SseEvent()
    for line in text.split("\n"):
        if line.startswith(":"):
            block.comments.append(line[1:].strip())
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name in {"event", "data", "id"}:
            setattr(block, name, value)
    return block


class HttpExchange:
    """One HTTP request through the ASGI application, its answer read as it arrives."""

    def __init__(
        self, method: str, path: str, *, query: str = "", headers: Headers = (), body: bytes = b""
    ) -> None:
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [
                (b"host", b"testserver"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
        }
        self.body_out = body
        self.to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.buffer = ""
        self.more_body = True
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> HttpExchange:
        self.task = asyncio.create_task(application(self.scope, self.to_app.get, self.from_app.put))
        await self.to_app.put({"type": "http.request", "body": self.body_out, "more_body": False})
        start = await asyncio.wait_for(self.from_app.get(), TIMEOUT)
        assert start["type"] == "http.response.start", start
        self.status = start["status"]
        self.headers = {name.lower(): value for name, value in start["headers"]}
        return self

    async def _chunk(self, wait: float) -> None:
        message = await asyncio.wait_for(self.from_app.get(), wait)
        assert message["type"] == "http.response.body"
        self.buffer += message.get("body", b"").decode()
        self.more_body = message.get("more_body", False)

    async def body(self) -> str:
        """The rest of an answer that ends."""
        while self.more_body:
            await self._chunk(TIMEOUT)
        return self.buffer

    async def json(self) -> Any:
        return json.loads(await self.body())

    async def next_block(self) -> SseEvent:
        while "\n\n" not in self.buffer:
            if not self.more_body:
                raise EOFError("the stream ended")
            await self._chunk(TIMEOUT)
        text, self.buffer = self.buffer.split("\n\n", 1)
        return parse_sse(text)

    async def next_event(self) -> SseEvent:
        while True:
            block = await self.next_block()
            if block.event is not None:
                return block

    async def all_events(self) -> list[SseEvent]:
        """Every event of a stream that ends."""
        await self.body()
        blocks = [parse_sse(text) for text in self.buffer.split("\n\n") if text.strip()]
        self.buffer = ""
        return [block for block in blocks if block.event is not None]

    async def quiet_events(self) -> list[SseEvent]:
        """Every event that arrives until the stream has been quiet for QUIET seconds."""
        found: list[SseEvent] = []
        while True:
            while "\n\n" in self.buffer:
                text, self.buffer = self.buffer.split("\n\n", 1)
                block = parse_sse(text)
                if block.event is not None:
                    found.append(block)
            try:
                await self._chunk(QUIET)
            except TimeoutError:
                return found

    async def close(self) -> None:
        if self.task is None or self.task.done():
            return
        await self.to_app.put({"type": "http.disconnect"})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.task, TIMEOUT)


Exchange = Callable[..., Awaitable[HttpExchange]]


@pytest.fixture
async def http(tokens: dict[str, str]) -> AsyncIterator[Exchange]:
    """`await http(method, path, user=..., query=..., headers=..., json=... | body=...)`."""
    opened: list[HttpExchange] = []

    async def exchange(
        method: str,
        path: str,
        *,
        user: str | None = None,
        query: str = "",
        headers: Headers = (),
        json_body: Any = None,
        body: bytes = b"",
    ) -> HttpExchange:
        all_headers = list(headers)
        if user is not None:
            all_headers.append((b"authorization", f"Bearer {tokens[user]}".encode()))
        if json_body is not None:
            body = json.dumps(json_body).encode()
            all_headers.append((b"content-type", b"application/json"))
        found = HttpExchange(method, path, query=query, headers=all_headers, body=body)
        opened.append(found)
        return await found.start()

    yield exchange
    for found in opened:
        with contextlib.suppress(Exception):
            await found.close()
    await sync_to_async(connections.close_all)()
    # Under ASGI each request's ORM work runs on a thread of its own; an open connection left
    # there would stop the test database from being dropped.
    gc.collect()
