"""The web UI in headless Chromium against the real server (tests/e2e/server.py: the embedded
profile with the model replaced by test doubles): sign in, threads, streaming, stop,
regenerate, edit and delete, files and artifacts, two people live, search and unread markers,
reconnects, phone width and the keyboard. XSS payloads are in test_ui_xss.py."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Browser, FilePayload, Page, WebSocketRoute, expect

from tests.e2e.conftest import Api, E2EServer, login, new_context_as, shot

REPLY_PREFIX = "Hello from the scripted model. You said: "
SALES_CSV = b"region,amount\nnorth,10\nsouth,25\nnorth,5\neast,7\n"


def sign_in(page: Page, server: E2EServer, username: str = "alice") -> None:
    user = server.users[username]
    login(page, server.url, user.username, user.password)
    expect(page.get_by_test_id("thread-list")).to_be_visible()


def open_thread(page: Page, thread_id: str) -> None:
    page.locator(f'[data-thread-id="{thread_id}"]').click()
    expect(page.get_by_test_id("composer-text")).to_be_focused()


def send(page: Page, text: str) -> None:
    page.get_by_test_id("composer-text").fill(text)
    page.get_by_test_id("composer-text").press("Enter")


def messages(page: Page) -> Any:
    return page.get_by_test_id("message")


def ai_messages(page: Page) -> Any:
    return page.locator("li.msg.ai")


def record_text_of(page: Page, selector: str) -> None:
    """Record every distinct text the element matching `selector` shows, as it changes, in
    window.__seen (a MutationObserver; Playwright's evaluate is not subject to the page CSP)."""
    page.evaluate(
        """(selector) => {
            window.__seen = [];
            const note = () => {
                const node = document.querySelector(selector);
                const text = node ? node.textContent : null;
                const last = window.__seen[window.__seen.length - 1];
                if (text && last !== text) window.__seen.push(text);
            };
            new MutationObserver(note).observe(
                document.body, {subtree: true, childList: true, characterData: true});
        }""",
        selector,
    )


def seen(page: Page) -> list[str]:
    """The texts recorded, without the whitespace Markdown's block tags leave around them."""
    texts = [text.strip() for text in page.evaluate("window.__seen || []")]
    return [text for index, text in enumerate(texts) if index == 0 or text != texts[index - 1]]


def wait_until(check: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# --- signing in, threads, a streamed reply, two people ------------------------------------------


def test_a_bad_password_is_refused_and_sign_out_works(page: Page, e2e_server: E2EServer) -> None:
    page.goto(f"{e2e_server.url}/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "not her password")
    page.click("[type=submit]")
    expect(page.get_by_test_id("login-error")).to_be_visible()
    shot(page, "login")
    sign_in(page, e2e_server)
    page.get_by_test_id("logout").click()
    expect(page).to_have_url(re.compile(r"/login/$"))
    page.goto(f"{e2e_server.url}/")
    expect(page).to_have_url(re.compile(r"/login/"))


def test_create_a_thread_send_and_watch_the_reply_stream_to_both_members(
    page: Page, browser: Browser, e2e_server: E2EServer, api: Callable[[str], Api]
) -> None:
    sign_in(page, e2e_server)
    page.get_by_test_id("new-thread").click()
    page.fill("#tf-title", "Launch plan")
    page.fill("#tf-members", "bob")
    page.fill("#tf-topics", "planning")
    page.get_by_test_id("create-thread").click()
    expect(page.get_by_test_id("thread-title")).to_have_text("Launch plan")
    expect(page.locator("#thread-meta")).to_contain_text("bob")
    expect(page.locator("#thread-meta")).to_contain_text("planning")
    thread_id = page.url.split("#", 1)[1]

    # bob, in his own browser, has the thread open before anything is said.
    bob_context, bob = new_context_as(browser, e2e_server, "bob")
    try:
        expect(bob.locator(f'[data-thread-id="{thread_id}"]')).to_be_visible()
        open_thread(bob, thread_id)
        record_text_of(page, "li.msg.ai .body")
        record_text_of(bob, "li.msg.ai .body")

        question = "What should we launch first?"
        send(page, question)
        # Mine appears at once, before the server answers.
        expect(messages(page).first).to_contain_text(question, timeout=1000)
        expect(ai_messages(page)).to_have_count(1)
        expect(ai_messages(page).first).to_have_attribute("data-status", "complete", timeout=30000)
        expect(page.get_by_test_id("composer-text")).to_have_value("")
        reply = REPLY_PREFIX + question
        expect(ai_messages(page).first.get_by_test_id("message-body")).to_have_text(reply)
        expect(ai_messages(page).first.get_by_test_id("reply-cost")).to_be_visible()

        # It arrived in pieces, each a longer prefix of the reply, in both browsers.
        for browser_page in (page, bob):
            texts = seen(browser_page)
            assert len(texts) >= 3, texts
            assert all(reply.startswith(text) for text in texts), texts
            assert texts[-1] == reply

        # bob sees the question and the reply live, with no reload.
        expect(messages(bob)).to_have_count(2)
        expect(messages(bob).first).to_contain_text(question)
        expect(ai_messages(bob).first.get_by_test_id("message-body")).to_have_text(reply)
        # What both show is what the server stored.
        stored = api("alice").ok("GET", f"/threads/{thread_id}/messages/")["messages"]
        assert [m["text"] for m in stored] == [question, reply]

        # bob answers; alice gets it live.
        bob.get_by_label("AI reply").uncheck()
        send(bob, "Sounds good to me")
        expect(messages(page)).to_have_count(3)
        expect(messages(page).nth(2)).to_contain_text("Sounds good to me")
        expect(messages(page).nth(2)).to_contain_text("bob")
        shot(page, "thread")
    finally:
        bob_context.close()


def test_stop_ends_a_streaming_reply_and_keeps_its_text(
    page: Page, e2e_server: E2EServer, api: Callable[[str], Api]
) -> None:
    thread = api("alice").thread_create("Stop test")
    sign_in(page, e2e_server)
    open_thread(page, thread["id"])
    send(page, "please be slow")
    reply = ai_messages(page).first
    expect(reply.get_by_test_id("message-body")).to_contain_text("word3", timeout=15000)
    shot(page, "streaming")
    reply.get_by_test_id("stop").click()
    expect(reply).to_have_attribute("data-status", "cancelled", timeout=5000)
    expect(reply.get_by_test_id("message-status")).to_have_text("stopped")
    expect(reply.get_by_test_id("stop")).to_have_count(0)
    shown = reply.get_by_test_id("message-body").inner_text()
    assert "word3" in shown and "word299" not in shown
    time.sleep(0.5)  # nothing more arrives after the stop
    assert reply.get_by_test_id("message-body").inner_text() == shown
    stored = api("alice").wait_reply(reply.get_attribute("data-message-id") or "")
    assert stored["status"] == "cancelled"
    assert stored["text"].strip() == shown.strip()


def test_regenerate_edit_and_delete(
    page: Page, e2e_server: E2EServer, api: Callable[[str], Api]
) -> None:
    thread = api("alice").thread_create("Edits")
    sign_in(page, e2e_server)
    open_thread(page, thread["id"])
    send(page, "first question")
    expect(ai_messages(page).first).to_have_attribute("data-status", "complete", timeout=30000)

    ai_messages(page).first.get_by_test_id("regenerate").click()
    expect(ai_messages(page)).to_have_count(2)
    expect(ai_messages(page).nth(1)).to_have_attribute("data-status", "complete", timeout=30000)
    expect(ai_messages(page).nth(1).get_by_test_id("message-body")).to_have_text(
        REPLY_PREFIX + "first question"
    )

    mine = page.locator("li.msg.mine").first
    mine.get_by_test_id("edit").click()
    page.get_by_test_id("edit-box").fill("first question, **edited**")
    page.get_by_test_id("save-edit").click()
    expect(mine.get_by_test_id("message-body")).to_have_text("first question, edited")
    expect(mine.locator("strong")).to_have_text("edited")
    expect(mine).to_contain_text("(edited)")
    # Not mine: no edit button on the AI's reply.
    expect(ai_messages(page).first.get_by_test_id("edit")).to_have_count(0)

    page.once("dialog", lambda dialog: dialog.accept())
    mine.get_by_test_id("delete").click()
    expect(page.locator("li.msg.mine")).to_have_count(0)
    stored = api("alice").ok("GET", f"/threads/{thread['id']}/messages/")["messages"]
    assert all(m["userId"] is None for m in stored)


# --- files and artifacts -----------------------------------------------------------------------


def test_a_csv_upload_becomes_a_chart_and_a_table(
    page: Page, e2e_server: E2EServer, api: Callable[[str], Api]
) -> None:
    thread = api("alice").thread_create("Sales")
    sign_in(page, e2e_server)
    open_thread(page, thread["id"])
    page.get_by_test_id("model-picker").select_option(e2e_server.models["e2e-crew"])
    page.get_by_test_id("file-input").set_input_files(
        files=[FilePayload(name="sales.csv", mimeType="text/csv", buffer=SALES_CSV)]
    )
    pending = page.get_by_test_id("pending-file")
    expect(pending).to_contain_text("sales.csv")
    expect(pending).to_contain_text("ready")
    send(page, "Chart the amount by region")
    expect(page.get_by_test_id("pending-file")).to_have_count(0)
    question = page.locator("li.msg.mine").first
    expect(question.get_by_test_id("attachment")).to_contain_text("sales.csv")

    reply = ai_messages(page).first
    expect(reply.get_by_test_id("agent-step")).to_be_visible(timeout=15000)
    expect(reply).to_have_attribute("data-status", "complete", timeout=60000)
    chart = reply.locator('[data-testid="artifact"][data-kind="chart"]')
    table = reply.locator('[data-testid="artifact"][data-kind="table"]')
    expect(chart).to_have_count(1)
    expect(table).to_have_count(1)
    image = chart.locator("img")
    wait_until(
        lambda: image.evaluate("img => img.complete && img.naturalWidth > 0"), what="chart image"
    )
    expect(table.locator("th").first).to_have_text("region")
    expect(table.locator("tbody tr")).to_have_count(3)
    expect(table.locator("tbody")).to_contain_text("north")
    expect(table.get_by_test_id("artifact-download")).to_have_text("Download CSV")
    with page.expect_download() as download_info:
        table.get_by_test_id("artifact-download").click()
    csv_text = download_info.value.path().read_text(encoding="utf-8")
    assert csv_text.splitlines()[0].startswith("region,")
    with page.expect_download() as attachment:
        question.get_by_test_id("attachment").click()
    assert attachment.value.path().read_bytes() == SALES_CSV
    reply.scroll_into_view_if_needed()
    shot(page, "artifacts")


def test_a_file_over_the_limit_is_refused_with_a_clear_message(
    page: Page, e2e_server: E2EServer, api: Callable[[str], Api]
) -> None:
    thread = api("alice").thread_create("Big file")
    sign_in(page, e2e_server)
    open_thread(page, thread["id"])
    limit_mb = page.evaluate(
        "JSON.parse(document.getElementById('tl-config').textContent).maxFileMb"
    )
    too_big = b"x" * (limit_mb * 1024 * 1024 + 1)
    page.get_by_test_id("file-input").set_input_files(
        files=[FilePayload(name="huge.txt", mimeType="text/plain", buffer=too_big)]
    )
    expect(page.get_by_test_id("pending-file")).to_contain_text(f"limited to {limit_mb} MB")
    # Removing it lets the message go without it.
    page.get_by_label("Remove huge.txt").click()
    expect(page.get_by_test_id("pending-file")).to_have_count(0)


def test_drag_and_drop_attaches_a_file(
    page: Page, e2e_server: E2EServer, api: Callable[[str], Api]
) -> None:
    thread = api("alice").thread_create("Drop")
    sign_in(page, e2e_server)
    open_thread(page, thread["id"])
    page.evaluate(
        """() => {
            const data = new DataTransfer();
            data.items.add(new File(["a,b\\n1,2\\n"], "dropped.csv", {type: "text/csv"}));
            const target = document.getElementById("thread");
            target.dispatchEvent(new DragEvent("dragenter", {dataTransfer: data, bubbles: true}));
            const drop = {dataTransfer: data, bubbles: true, cancelable: true};
            target.dispatchEvent(new DragEvent("drop", drop));
        }"""
    )
    expect(page.get_by_test_id("pending-file")).to_contain_text("dropped.csv")
    expect(page.get_by_test_id("pending-file")).to_contain_text("ready")
    page.get_by_label("AI reply").uncheck()
    send(page, "here it is")
    expect(page.locator("li.msg.mine").first.get_by_test_id("attachment")).to_contain_text(
        "dropped.csv"
    )


# --- finding things --------------------------------------------------------------------------


def test_unread_markers_search_topics_and_paging_up(
    page: Page, e2e_server: E2EServer, api: Callable[[str], Api]
) -> None:
    alice, bob = api("alice"), api("bob")
    topic = alice.ok("POST", "/topics/", json={"name": f"ops-{time.monotonic_ns()}"})
    busy = alice.thread_create("Long history", members=("bob",), topicIds=[topic["id"]])
    for index in range(120):
        alice.message_post(busy["id"], f"history line {index} zebra{index}")
    quiet = bob.thread_create("Quiet one")

    sign_in(page, e2e_server, "bob")
    item = page.locator(f'[data-thread-id="{busy["id"]}"]')
    expect(item.get_by_test_id("unread")).to_be_visible()
    expect(
        page.locator(f'[data-thread-id="{quiet["id"]}"]').get_by_test_id("unread")
    ).to_have_count(0)

    # Topic filter.
    page.get_by_test_id("topic-filter").select_option(topic["id"])
    expect(page.get_by_test_id("thread-item")).to_have_count(1)
    page.get_by_test_id("topic-filter").select_option("")
    expect(page.locator(f'[data-thread-id="{quiet["id"]}"]')).to_be_visible()

    # Opening reads it; the newest 50 come first; scrolling up pages back to the first line.
    open_thread(page, busy["id"])
    expect(item.get_by_test_id("unread")).to_have_count(0)
    expect(messages(page)).to_have_count(50)
    expect(messages(page).last).to_contain_text("history line 119")
    for _ in range(10):
        page.locator("#messages").evaluate("box => { box.scrollTop = 0; }")
        if messages(page).count() >= 120:
            break
        time.sleep(0.3)
    expect(messages(page)).to_have_count(120)
    expect(messages(page).first).to_contain_text("history line 0 ")
    marks = bob.ok("GET", f"/threads/{busy['id']}/")["members"]
    assert next(m for m in marks if m["username"] == "bob")["lastReadSeq"] == 120

    # A new message elsewhere marks that thread unread, live.
    alice_in_quiet = bob.ok("POST", f"/threads/{quiet['id']}/members/", json={"userIds": ["alice"]})
    assert alice_in_quiet
    alice.message_post(quiet["id"], "ping from alice")
    expect(
        page.locator(f'[data-thread-id="{quiet["id"]}"]').get_by_test_id("unread")
    ).to_be_visible()

    # Search finds a message; its hit opens the thread at that message.
    page.get_by_test_id("search").fill("zebra7")
    hit = page.get_by_test_id("search-hit")
    expect(hit).to_have_count(1)
    expect(hit).to_contain_text("history line 7")
    hit.click()
    expect(page.locator("li.msg.highlight")).to_contain_text("history line 7 ")
    shot(page, "search")


# --- reconnecting ------------------------------------------------------------------------------


def test_a_dropped_connection_resumes_the_stream_without_losing_or_doubling_text(
    page: Page, e2e_server: E2EServer, api: Callable[[str], Api]
) -> None:
    thread = api("alice").thread_create("Flaky network")
    sockets: list[WebSocketRoute] = []
    network = {"down": False}

    def route(ws: WebSocketRoute) -> None:
        # Every socket the page opens goes through here: while the network is "down" it is
        # closed at once, as a failed reconnect would be.
        if network["down"]:
            ws.close(code=1011, reason="network down")
            return
        ws.connect_to_server()
        sockets.append(ws)

    page.route_web_socket(re.compile(r".*/ws/v1/events/"), route)
    sign_in(page, e2e_server)
    open_thread(page, thread["id"])
    send(page, "slow story please")
    reply = ai_messages(page).first
    expect(reply.get_by_test_id("message-body")).to_contain_text("word2", timeout=15000)

    network["down"] = True
    for ws in sockets:
        ws.close(code=1006, reason="dropped")
    expect(page.get_by_test_id("offline")).to_be_visible()
    shot(page, "offline")
    held = reply.get_by_test_id("message-body").inner_text()
    time.sleep(2)  # the reply goes on streaming while this page is away
    network["down"] = False
    expect(page.get_by_test_id("offline")).to_be_hidden(timeout=10000)
    expect(reply.get_by_test_id("message-body")).not_to_have_text(held)

    reply.get_by_test_id("stop").click()
    expect(reply).to_have_attribute("data-status", "cancelled", timeout=5000)
    stored = api("alice").wait_reply(reply.get_attribute("data-message-id") or "")
    shown = reply.get_by_test_id("message-body").inner_text()
    assert shown.strip() == stored["text"].strip()
    words = stored["text"].split()
    # Nothing lost, nothing doubled: word0 … wordN, each once, in order.
    assert words == [f"word{i}" for i in range(len(words))]


# --- phone width and the keyboard --------------------------------------------------------------


def test_phone_width_and_keyboard_only(
    browser: Browser, e2e_server: E2EServer, api: Callable[[str], Api]
) -> None:
    thread = api("alice").thread_create("On the go")
    context = browser.new_context(
        base_url=e2e_server.url, viewport={"width": 390, "height": 780}, is_mobile=True
    )
    try:
        page = context.new_page()
        user = e2e_server.users["alice"]
        page.goto("/login/")
        # Keyboard only: the username field has focus; Tab, type, Enter.
        expect(page.locator("input[name=username]")).to_be_focused()
        page.keyboard.type(user.username)
        page.keyboard.press("Tab")
        page.keyboard.type(user.password)
        with page.expect_navigation():
            page.keyboard.press("Enter")
        expect(page.get_by_test_id("thread-list")).to_be_visible()
        # The list fills the screen; the thread pane is hidden until a thread is chosen.
        expect(page.locator("#thread")).to_be_hidden()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways: {width}px"
        shot(page, "phone-list")

        item = page.locator(f'[data-thread-id="{thread["id"]}"]')
        item.focus()
        page.keyboard.press("Enter")
        expect(page.get_by_test_id("composer-text")).to_be_focused()
        page.keyboard.type("hello from my phone")
        page.keyboard.press("Enter")
        reply = ai_messages(page).first
        expect(reply).to_have_attribute("data-status", "complete", timeout=30000)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        shot(page, "phone-thread")
        page.get_by_label("Back to threads").click()
        expect(page.get_by_test_id("thread-list")).to_be_visible()
    finally:
        context.close()


def test_new_thread_dialog_by_keyboard(page: Page, e2e_server: E2EServer) -> None:
    sign_in(page, e2e_server)
    page.get_by_test_id("new-thread").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#tf-title")).to_be_focused()
    page.keyboard.type("Typed thread")
    page.keyboard.press("Tab")
    page.keyboard.type("nobody-by-that-name")
    page.keyboard.press("Enter")
    expect(page.locator("#tf-error")).to_contain_text("nobody-by-that-name")
    page.locator("#tf-members").fill("")
    page.locator("#tf-members").press("Enter")
    expect(page.get_by_test_id("thread-title")).to_have_text("Typed thread")
    page.keyboard.press("Escape")  # nothing modal is left open


def test_the_admin_link_is_for_staff_only(page: Page, e2e_server: E2EServer) -> None:
    sign_in(page, e2e_server)
    expect(page.get_by_role("link", name="Admin", exact=True)).to_have_count(0)


def test_the_owner_adds_a_member_who_can_then_leave(
    page: Page, browser: Browser, e2e_server: E2EServer, api: Callable[[str], Api]
) -> None:
    thread = api("alice").thread_create("Growing team")
    sign_in(page, e2e_server)
    open_thread(page, thread["id"])
    page.once("dialog", lambda dialog: dialog.accept("nobody-here"))
    page.get_by_test_id("add-member").click()
    expect(page.get_by_test_id("composer-error")).to_contain_text("nobody-here")
    page.once("dialog", lambda dialog: dialog.accept("bob"))
    page.get_by_test_id("add-member").click()
    expect(page.locator("#thread-meta")).to_contain_text("alice, bob")
    expect(page.get_by_test_id("leave-thread")).to_be_hidden()  # owners delete instead

    bob_context, bob = new_context_as(browser, e2e_server, "bob")
    try:
        open_thread(bob, thread["id"])
        expect(bob.get_by_test_id("add-member")).to_be_hidden()
        bob.once("dialog", lambda dialog: dialog.accept())
        bob.get_by_test_id("leave-thread").click()
        expect(bob.locator(f'[data-thread-id="{thread["id"]}"]')).to_have_count(0)
        expect(page.locator("#thread-meta")).not_to_contain_text("bob")
    finally:
        bob_context.close()
