"""Events cross processes: two daphne servers, one PostgreSQL database, one Redis channel layer.

A socket or stream held by one server receives what a REST call commits on the other, resumes
on the other server from the shared log, and an outsider receives nothing on either.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.integration.conftest import Live, Server

pytestmark = pytest.mark.integration

TIMEOUT = 5.0
QUIET = 0.5


async def rest(
    live: Live, server: Server, user: str, method: str, path: str, body: Any = None
) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.http, timeout=TIMEOUT) as client:
        response = await client.request(
            method, f"/api/v1{path}", json=body, headers=live.headers(user)
        )
    assert response.status_code in {200, 201}, (response.status_code, response.text)
    data = response.json()
    assert isinstance(data, dict)
    return data


async def new_thread(live: Live, server: Server) -> dict[str, Any]:
    """A thread owned by alice with bob in it."""
    return await rest(live, server, "alice", "POST", "/threads/", {"userIds": ["bob"]})


async def post(live: Live, server: Server, thread_id: str, text: str) -> dict[str, Any]:
    return await rest(
        live, server, "alice", "POST", f"/threads/{thread_id}/messages/", {"text": text}
    )


async def receive(ws: ClientConnection) -> dict[str, Any]:
    frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert isinstance(frame, dict)
    return frame


async def assert_silent(ws: ClientConnection) -> None:
    with pytest.raises(TimeoutError):
        frame = await asyncio.wait_for(ws.recv(), QUIET)
        pytest.fail(f"unexpected frame {frame!r}")


async def subscribe(
    ws: ClientConnection, thread_id: str, last_seq: int | None = None
) -> dict[str, Any]:
    frame: dict[str, Any] = {"action": "subscribe", "threadId": thread_id}
    if last_seq is not None:
        frame["lastSeq"] = last_seq
    await ws.send(json.dumps(frame))
    return await receive(ws)


def socket_to(live: Live, server: Server, user: str) -> Any:
    return connect(f"{server.ws}/ws/v1/events/?token={live.tokens[user]}", open_timeout=TIMEOUT)


def message_added(message: dict[str, Any], seq: int) -> dict[str, Any]:
    return {
        "type": "chatMessageAdded",
        "threadId": message["threadId"],
        "seq": seq,
        "data": message,
    }


@pytest.mark.parametrize(("held", "posted"), [("a", "b"), ("b", "a")])
async def test_a_websocket_on_one_server_receives_a_post_made_on_the_other(
    live: Live, held: str, posted: str
) -> None:
    on, via = getattr(live, held), getattr(live, posted)
    thread = await new_thread(live, via)

    async with socket_to(live, on, "bob") as bob:
        assert await subscribe(bob, thread["id"]) == {
            "type": "subscribed",
            "threadId": thread["id"],
            "seq": 1,
        }
        message = await post(live, via, thread["id"], f"from {via.name} to {on.name}")

        assert await receive(bob) == message_added(message, seq=2)
        await assert_silent(bob)


async def sse_lines(response: httpx.Response) -> AsyncIterator[str]:
    async for line in response.aiter_lines():
        yield line


async def next_sse_event(lines: AsyncIterator[str]) -> dict[str, str]:
    """The fields of the next SSE block that carries an event."""
    block: dict[str, str] = {}
    while True:
        line = await asyncio.wait_for(anext(lines), TIMEOUT)
        if line == "":
            if "event" in block:
                return block
            block = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            block[name] = value


async def test_an_sse_stream_on_one_server_receives_a_post_made_on_the_other(live: Live) -> None:
    thread = await new_thread(live, live.a)
    url = f"{live.b.http}/api/v1/events/?threadId={thread['id']}"

    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT, read=TIMEOUT)) as client,
        client.stream("GET", url, headers=live.headers("bob")) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        lines = sse_lines(response)
        assert await asyncio.wait_for(anext(lines), TIMEOUT) == "retry: 2000"
        assert await asyncio.wait_for(anext(lines), TIMEOUT) == f"id: {thread['id']}:1"
        assert await asyncio.wait_for(anext(lines), TIMEOUT) == ": connected"

        message = await post(live, live.a, thread["id"], "over SSE")

        block = await next_sse_event(lines)
        assert block["id"] == f"{thread['id']}:2"
        assert block["event"] == "chatMessageAdded"
        assert json.loads(block["data"]) == message_added(message, seq=2)


@pytest.mark.parametrize(("first", "second"), [("a", "b"), ("b", "a")])
async def test_resuming_on_the_other_server_gives_exactly_the_missed_events(
    live: Live, first: str, second: str
) -> None:
    before, after = getattr(live, first), getattr(live, second)
    thread = await new_thread(live, before)
    async with socket_to(live, before, "bob") as bob:
        await subscribe(bob, thread["id"])
        seen = await post(live, before, thread["id"], "seen")
        assert await receive(bob) == message_added(seen, seq=2)

    missed = [
        await post(live, server, thread["id"], f"missed {i}")
        for i, server in enumerate((before, after, before))
    ]

    async with socket_to(live, after, "bob") as bob:
        assert await subscribe(bob, thread["id"], last_seq=2) == {
            "type": "subscribed",
            "threadId": thread["id"],
            "seq": 5,
        }
        assert [await receive(bob) for _ in missed] == [
            message_added(m, seq=3 + i) for i, m in enumerate(missed)
        ]
        live_one = await post(live, before, thread["id"], "live again")
        assert await receive(bob) == message_added(live_one, seq=6)
        await assert_silent(bob)


async def test_an_outsider_receives_nothing_on_either_server(live: Live) -> None:
    thread = await new_thread(live, live.a)
    not_found = {
        "type": "error",
        "error": {"code": "not_found", "message": "Thread not found.", "fields": {}},
        "action": "subscribe",
        "threadId": thread["id"],
    }

    async with (
        socket_to(live, live.a, "bob") as witness,
        socket_to(live, live.a, "charlie") as charlie_a,
        socket_to(live, live.b, "charlie") as charlie_b,
    ):
        await subscribe(witness, thread["id"])
        assert await subscribe(charlie_a, thread["id"]) == not_found
        assert await subscribe(charlie_b, thread["id"]) == not_found

        for server in (live.a, live.b):
            message = await post(live, server, thread["id"], f"secret on {server.name}")
            assert (await receive(witness))["data"] == message
        await assert_silent(charlie_a)
        await assert_silent(charlie_b)
