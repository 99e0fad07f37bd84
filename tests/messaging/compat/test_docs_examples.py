"""docs/compat.md's examples, executed: every curl command (parsed from the page, run through the
ASGI application in the page's order), the WebSocket session (each `>` frame sent, each answer
checked against its `<` line), and the example agent (started and asked for a turn). An example
that stops working, or a doc edit that breaks one, fails here."""

from __future__ import annotations

import json
import re
import shlex
import socket
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart

from agents.models import AIModel, LegacyModelNumber
from chatproject.asgi import application
from tests.conftest import Cast
from tests.messaging.compat.conftest import Exchange, act
from threads.models import Thread

pytestmark = pytest.mark.django_db(transaction=True)

DOC = Path(__file__).resolve().parents[3] / "docs" / "compat.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
NOTES = b"We ship on Friday. Lyon office opens in May."
ELLIPSIS = "\u2026"


def blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(DOC.read_text())]


def curl_commands(text: str) -> list[str]:
    joined = text.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip().startswith("curl ")]


def ws_script(text: str) -> list[tuple[str, Any]]:
    return [
        (line[0], json.loads(line[2:]))
        for line in text.splitlines()
        if line.startswith(("> ", "< "))
    ]


def test_the_page_has_the_examples_this_test_runs() -> None:
    found = blocks()
    curls = [c for kind, text in found if kind == "sh" for c in curl_commands(text)]
    scripts = [s for kind, text in found if kind == "text" and (s := ws_script(text))]
    assert len(curls) >= 12
    paths = {urlsplit(Curl(c, {"TL": "http://x", "TOKEN": "t"}).url).path for c in curls}
    assert paths >= {
        "/chat-svc/thread",
        "/chat-svc/threads",
        "/chat-svc/messages",
        "/chat-svc/events",
        "/api/v1/chat/sessions",
        "/api/v1/chat/history",
        "/api/v1/chat/messages",
        "/upload",
    }
    assert len(scripts) == 1 and len(scripts[0]) >= 10
    assert any(kind == "python" and "def serve" in text for kind, text in found)


class Curl:
    """The parts of a curl command the examples use; anything else fails the test."""

    def __init__(self, command: str, variables: dict[str, str]) -> None:
        for name, value in variables.items():
            command = command.replace(f"${name}", value)
        args = shlex.split(command)[1:]
        self.method = "GET"
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.streaming = False
        self.form: dict[str, Any] = {}
        self.url = ""
        data: str | None = None
        while args:
            arg = args.pop(0)
            if arg == "-s":
                continue
            if arg == "-N":
                self.streaming = True
            elif arg == "-X":
                self.method = args.pop(0)
            elif arg == "-H":
                name, _, value = args.pop(0).partition(":")
                self.headers.append((name.strip().lower().encode(), value.strip().encode()))
            elif arg == "-d":
                data = args.pop(0)
            elif arg == "-F":
                name, _, value = args.pop(0).partition("=")
                if value.startswith("@"):
                    assert value == "@notes.txt", value
                    self.form[name] = SimpleUploadedFile("notes.txt", NOTES)
                else:
                    self.form[name] = value
            elif arg.startswith("-"):
                raise AssertionError(f"curl option {arg} is not understood by this test")
            else:
                self.url = arg
        if data is not None:
            self.body = data.encode()
            if self.method == "GET":
                self.method = "POST"
        if self.form:
            self.body = encode_multipart(BOUNDARY, self.form)
            self.headers.append((b"content-type", MULTIPART_CONTENT.encode()))
            if self.method == "GET":
                self.method = "POST"


async def run_curl(http: Exchange, command: str, token: str) -> tuple[int, str]:
    curl = Curl(command, {"TL": "http://127.0.0.1:8000", "TOKEN": token})
    parts = urlsplit(curl.url)
    exchange = await http(
        curl.method, parts.path, query=parts.query, headers=curl.headers, body=curl.body
    )
    if not curl.streaming:
        return exchange.status, await exchange.body()
    first = await exchange.next_block()
    rest = await exchange.quiet_events()
    await exchange.close()
    return exchange.status, "\n".join([*first.comments, *(e.event or "" for e in rest)])


def matches(expected: Any, got: Any) -> bool:
    """`got` has `expected`'s shape: the same keys, and the same values where the page shows
    real ones (a value with an ellipsis in it stands for any value)."""
    if isinstance(expected, str):
        return ELLIPSIS in expected or expected == got
    if isinstance(expected, dict):
        return (
            isinstance(got, dict)
            and set(expected) == set(got)
            and all(matches(v, got[k]) for k, v in expected.items())
        )
    if isinstance(expected, list):
        if expected and expected[-1] == ELLIPSIS:  # [a, b, "…"]: starts with a, b
            head = expected[:-1]
            return (
                isinstance(got, list) and len(got) >= len(head) and matches(head, got[: len(head)])
            )
        return (
            isinstance(got, list)
            and len(expected) == len(got)
            and all(matches(e, g) for e, g in zip(expected, got, strict=True))
        )
    return bool(expected == got)


async def test_every_example_on_the_page_runs(
    cast: Cast, http: Exchange, tokens: dict[str, str], scripted_llm
) -> None:
    # "with model number 8 mapped to a model in the admin"
    await act(
        LegacyModelNumber.objects.update_or_create,
        number=8,
        defaults={"legacy_name": "llama3.1:8b", "model_id": "mdl_smollm2"},
    )
    ran: list[str] = []
    for kind, text in blocks():
        if kind == "sh":
            for command in curl_commands(text):
                status, body = await run_curl(http, command, tokens["alice"])
                assert 200 <= status < 300, (command, status, body[:500])
                ran.append(command)
        elif kind == "text" and (script := ws_script(text)):
            await run_ws_script(script, tokens["alice"], cast)
            ran.append("websocket")
    assert "websocket" in ran and len(ran) >= 13
    # The examples' thread was used by all three protocols (the BFF's and the socket's
    # questions reached the model), and the last example deleted it.
    questions = [call[-1]["content"] for call in scripted_llm.calls]
    assert questions == ["alice: Summarise our plans", "alice: What did we plan?"]
    assert not await act(Thread.objects.filter(pk="thr_docs_plans").exists)


async def run_ws_script(script: list[tuple[str, Any]], token: str, cast: Cast) -> None:
    comm = WebsocketCommunicator(application, f"/ws?token={token}")
    connected, _ = await comm.connect(timeout=5)
    assert connected
    try:
        for (direction, sent), (back, expected) in zip(script[::2], script[1::2], strict=True):
            assert (direction, back) == (">", "<")
            await comm.send_json_to(sent)
            got = await comm.receive_json_from(timeout=5)
            assert matches(expected, got), (sent, expected, got)
            if isinstance(expected.get("data"), dict) and "user_id" in expected["data"]:
                assert got["data"]["user_id"] == cast.alice.pk
    finally:
        await comm.disconnect()


async def test_the_example_agent_answers_a_turn(cast: Cast, settings: Any) -> None:
    [code] = [text for kind, text in blocks() if kind == "python"]
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - the page's own example
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = namespace["serve"](f"127.0.0.1:{port}")
    try:
        settings.AGENT_GRPC_TARGET = f"127.0.0.1:{port}"
        await act(
            AIModel.objects.create,
            name="Echo",
            provider="grpc_agent",
            reserve_per_reply=Decimal("0.01"),
            available_to_all=True,
        )
        client = await act(cast.client, cast.alice)
        response = await act(
            client.post,
            f"/api/v1/threads/{cast.thread.pk}/messages/",
            {"text": "ping", "reply": True, "modelId": "Echo"},
            format="json",
        )
        assert response.status_code == 201, response.content
        reply = await act(client.get, f"/api/v1/messages/{response.json()['reply']['messageId']}/")
        assert (reply.json()["text"], reply.json()["status"]) == ("You said: ping", "complete")
        assert reply.json()["meta"]["usage"]["cost"] == "0.001000"
    finally:
        await sync_to_async(server.stop)(None)
