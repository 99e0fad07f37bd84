"""The harness itself works: the real server starts with its test doubles, Chromium opens its
pages, and the scripted models answer through the REST API end to end."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING

import httpx

from tests.e2e import server as e2e
from tests.e2e.conftest import Api, E2EServer

if TYPE_CHECKING:
    from playwright.sync_api import Page

SALES_CSV = b"region,amount\nNorth,10\nSouth,5\nNorth,7.5\nEast,2\n"


def test_chromium_opens_the_server(page: Page, e2e_server: E2EServer) -> None:
    page.goto("/healthz")
    assert '"ok"' in page.content()
    page.goto("/admin/login/")
    assert page.locator("input[name=username]").is_visible()
    assert page.locator("input[name=password]").is_visible()


def test_the_cast_is_seeded(e2e_server: E2EServer, api: Callable[[str], Api]) -> None:
    for name in e2e.USERS:
        me = api(name).ok("GET", "/me/")
        assert me["id"] == e2e_server.users[name].id
    names = {m["name"] for m in api("alice").ok("GET", "/models/")["models"]}
    assert {e2e.CREW_MODEL, e2e.PRICED_MODEL} <= names
    charlie = {m["name"] for m in api("charlie").ok("GET", "/models/")["models"]}
    assert e2e.CREW_MODEL not in charlie
    # Passwords work (the admin refuses non-staff users, so ask the session login API-free way:
    # the password check itself is what a UI login form calls).
    anonymous = httpx.get(f"{e2e_server.url}/api/v1/me/", timeout=5)
    assert anonymous.status_code == 401


def test_a_scripted_reply_streams_to_completion(api: Callable[[str], Api]) -> None:
    alice = api("alice")
    thread = alice.thread_create("Harness", members=("bob",))
    posted = alice.message_post(thread["id"], "hi", reply=True)
    reply = alice.wait_reply(posted["reply"]["messageId"])
    assert reply["status"] == "complete", reply
    assert reply["text"] == "Hello from the scripted model. You said: hi"
    # bob, a member, reads the same reply.
    assert api("bob").ok("GET", f"/messages/{reply['id']}/")["text"] == reply["text"]


def test_echo_returns_the_exact_text(api: Callable[[str], Api]) -> None:
    alice = api("alice")
    thread = alice.thread_create("Echo")
    payload = '<img src=x onerror="alert(1)">\n**bold** `code` <script>alert(2)</script>'
    posted = alice.message_post(
        thread["id"], e2e.ECHO + payload, reply=True, modelId=e2e.PRICED_MODEL
    )
    reply = alice.wait_reply(posted["reply"]["messageId"])
    assert reply["status"] == "complete", reply
    assert reply["text"] == payload
    assert Decimal(reply["meta"]["usage"]["cost"]) > 0, reply["meta"]  # the priced model charged


def test_a_slow_reply_streams_in_pieces_and_stops(api: Callable[[str], Api]) -> None:
    alice = api("alice")
    thread = alice.thread_create("Slow")
    reply_id = alice.message_post(thread["id"], "tell it slow", reply=True)["reply"]["messageId"]
    deadline = time.monotonic() + 20
    while (partial := alice.ok("GET", f"/messages/{reply_id}/"))["text"].count("word") < 5:
        assert time.monotonic() < deadline, partial
        time.sleep(0.1)
    assert partial["status"] == "streaming"
    alice.ok("POST", f"/messages/{reply_id}/stop/")
    stopped = alice.wait_reply(reply_id)
    assert stopped["status"] == "cancelled", stopped
    assert stopped["text"].startswith("word0 word1 word2 word3 word4 ")
    assert len(stopped["text"].split()) < e2e.SLOW_PIECES


def test_the_crew_charts_an_attached_csv(api: Callable[[str], Api]) -> None:
    alice = api("alice")
    thread = alice.thread_create("Crew")
    upload = alice.file_upload("sales.csv", SALES_CSV)
    posted = alice.message_post(
        thread["id"],
        "Chart the sales by region",
        reply=True,
        modelId=e2e.CREW_MODEL,
        fileIds=[upload["id"]],
    )
    reply = alice.wait_reply(posted["reply"]["messageId"], timeout=120)
    assert reply["status"] == "complete", reply
    assert reply["text"].startswith("Scripted crew answer to: Chart the sales by region")
    artifacts = alice.ok("GET", f"/threads/{thread['id']}/artifacts/")["artifacts"]
    assert [a["kind"] for a in artifacts] == ["chart", "table"], artifacts
    chart = next(a for a in artifacts if a["kind"] == "chart")
    content = alice.get(f"/artifacts/{chart['id']}/content/")
    assert content.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_toolxss_puts_the_payload_into_tool_output(api: Callable[[str], Api]) -> None:
    alice = api("alice")
    thread = alice.thread_create("Crew XSS")
    payload = "<svg onload=alert(1)>"
    upload = alice.file_upload('"><img src=x onerror=alert(2)>.csv', SALES_CSV)
    posted = alice.message_post(
        thread["id"],
        e2e.TOOL_XSS + payload,
        reply=True,
        modelId=e2e.CREW_MODEL,
        fileIds=[upload["id"]],
    )
    reply = alice.wait_reply(posted["reply"]["messageId"], timeout=120)
    assert reply["status"] == "complete", reply
    assert reply["text"].startswith(payload)
    artifacts = alice.ok("GET", f"/threads/{thread['id']}/artifacts/")["artifacts"]
    assert sorted(a["kind"] for a in artifacts) == ["chart", "summary", "table"], artifacts
    assert {a["title"] for a in artifacts} == {payload}
