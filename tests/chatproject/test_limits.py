"""chatproject.limits.BodySizeLimit, the ASGI guard that refuses oversize bodies early."""

from __future__ import annotations

import contextlib
import json
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.conf import settings

from chatproject.limits import BodySizeLimit, BodyTooLarge
from messaging.uploads import upload_request_limit_bytes

LIMIT = 10


@dataclass
class Peer:
    """The server side of one connection: hands out body chunks, records what is sent."""

    chunks: list[dict[str, Any]] = field(default_factory=list)
    received: int = 0
    sent: list[MutableMapping[str, Any]] = field(default_factory=list)

    async def receive(self) -> dict[str, Any]:
        self.received += 1
        if self.received > len(self.chunks):
            return {"type": "http.disconnect"}
        return self.chunks[self.received - 1]

    async def send(self, message: MutableMapping[str, Any]) -> None:
        self.sent.append(message)

    def response(self) -> tuple[int, dict[bytes, bytes], Any]:
        start, body = self.sent
        assert start["type"] == "http.response.start"
        assert body["type"] == "http.response.body"
        return start["status"], dict(start["headers"]), json.loads(body["body"])


def _chunks(*bodies: bytes) -> list[dict[str, Any]]:
    return [
        {"type": "http.request", "body": body, "more_body": index < len(bodies) - 1}
        for index, body in enumerate(bodies)
    ]


def _scope(headers: list[tuple[bytes, bytes]] | None = None, kind: str = "http") -> dict[str, Any]:
    return {"type": kind, "path": "/api/v1/threads/", "headers": headers or []}


@dataclass
class ReadingApp:
    """An inner app that reads the whole body, then answers 200 with what it read."""

    calls: int = 0
    body: bytes = b""
    saw: BaseException | None = None
    read_again_after_error: bool = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        try:
            while True:
                message = await receive()
                self.body += message.get("body", b"")
                if not message.get("more_body"):
                    break
        except BodyTooLarge as exc:
            self.saw = exc
            if self.read_again_after_error:
                with contextlib.suppress(BodyTooLarge):
                    await receive()
            raise
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": self.body})


def _guard(app: Any) -> BodySizeLimit:
    return BodySizeLimit(app, limit_for_path=lambda path: LIMIT)


def _assert_413(peer: Peer) -> None:
    status, headers, body = peer.response()
    assert status == 413
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"connection"] == b"close"
    assert body == {
        "error": {
            "code": "too_large",
            "message": f"The request body is larger than {LIMIT} bytes.",
            "fields": {},
        }
    }


async def test_a_declared_length_over_the_limit_is_refused_without_reading() -> None:
    app, peer = ReadingApp(), Peer(chunks=_chunks(b"x" * 11))
    await _guard(app)(_scope([(b"content-length", b"11")]), peer.receive, peer.send)
    _assert_413(peer)
    assert peer.received == 0
    assert app.calls == 0


async def test_a_chunked_body_is_cut_off_when_it_crosses_the_limit() -> None:
    app = ReadingApp()
    peer = Peer(chunks=_chunks(b"abcd", b"efgh", b"ijkl", b"mnop", b"qrst"))
    await _guard(app)(_scope(), peer.receive, peer.send)
    assert isinstance(app.saw, BodyTooLarge)
    _assert_413(peer)
    # 4 + 4 + 4 bytes crosses 10 at the third chunk; nothing after it is pulled from the client.
    assert peer.received == 3


async def test_no_chunk_is_read_after_the_limit_even_if_the_app_asks_again() -> None:
    app = ReadingApp(read_again_after_error=True)
    peer = Peer(chunks=_chunks(b"abcd", b"efgh", b"ijkl", b"mnop", b"qrst"))
    await _guard(app)(_scope(), peer.receive, peer.send)
    _assert_413(peer)
    assert peer.received == 3


async def test_a_lying_content_length_is_caught_by_counting() -> None:
    app = ReadingApp()
    peer = Peer(chunks=_chunks(b"abcdef", b"ghijkl"))
    await _guard(app)(_scope([(b"content-length", b"5")]), peer.receive, peer.send)
    _assert_413(peer)
    assert peer.received == 2


async def test_an_unparsable_content_length_falls_back_to_counting() -> None:
    app = ReadingApp()
    peer = Peer(chunks=_chunks(b"abc"))
    await _guard(app)(_scope([(b"content-length", b"lots")]), peer.receive, peer.send)
    assert peer.sent[0]["status"] == 200
    assert app.body == b"abc"
    peer = Peer(chunks=_chunks(b"abcdef", b"ghijkl"))
    await _guard(ReadingApp())(_scope([(b"content-length", b"lots")]), peer.receive, peer.send)
    _assert_413(peer)


@pytest.mark.parametrize(
    ("chunks", "headers"),
    [
        ((b"abcde", b"fghij"), [(b"content-length", b"10")]),  # exactly the limit
        ((b"abc", b"", b"def"), []),
        ((b"",), [(b"content-length", b"0")]),
    ],
)
async def test_a_body_within_the_limit_passes_through_unchanged(
    chunks: tuple[bytes, ...], headers: list[tuple[bytes, bytes]]
) -> None:
    app, peer = ReadingApp(), Peer(chunks=_chunks(*chunks))
    await _guard(app)(_scope(headers), peer.receive, peer.send)
    assert app.calls == 1
    assert app.saw is None
    assert app.body == b"".join(chunks)
    assert peer.received == len(chunks)
    assert peer.sent == [
        {"type": "http.response.start", "status": 200, "headers": []},
        {"type": "http.response.body", "body": b"".join(chunks)},
    ]


async def test_the_inner_app_sees_the_same_messages() -> None:
    seen: list[dict[str, Any]] = []
    peer = Peer(chunks=_chunks(b"abc", b"def"))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(await receive())
        seen.append(await receive())

    await _guard(app)(_scope(), peer.receive, peer.send)
    assert seen == peer.chunks


@pytest.mark.parametrize("kind", ["websocket", "lifespan"])
async def test_other_scopes_pass_through_untouched(kind: str) -> None:
    got: list[tuple[Any, Any, Any]] = []
    peer = Peer()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got.append((scope, receive, send))

    scope = _scope([(b"content-length", b"999999")], kind=kind)
    await _guard(app)(scope, peer.receive, peer.send)
    assert got == [(scope, peer.receive, peer.send)]
    assert peer.received == 0
    assert peer.sent == []


async def test_a_response_already_started_is_not_followed_by_a_413() -> None:
    peer = Peer(chunks=_chunks(b"abcdefgh", b"ijklmnop"))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await receive()
        await receive()

    await _guard(app)(_scope(), peer.receive, peer.send)
    assert [message["type"] for message in peer.sent] == ["http.response.start"]


def test_the_project_limits_uploads_and_other_bodies_differently() -> None:
    from chatproject.asgi import _limit_for_path

    assert _limit_for_path("/api/v1/files/") == upload_request_limit_bytes()
    assert _limit_for_path("/upload") == upload_request_limit_bytes()
    assert _limit_for_path("/api/v1/threads/") == settings.DATA_UPLOAD_MAX_MEMORY_SIZE


async def test_the_asgi_application_refuses_an_oversize_declared_body() -> None:
    from chatproject.asgi import application

    peer = Peer(chunks=_chunks(b"{}"))
    size = settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/threads/",
        "raw_path": b"/api/v1/threads/",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-length", str(size).encode())],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    await application(scope, peer.receive, peer.send)
    status, _, body = peer.response()
    assert status == 413
    assert body["error"]["code"] == "too_large"
    assert peer.received == 0
