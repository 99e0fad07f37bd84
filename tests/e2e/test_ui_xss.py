"""No script from any message, file name, thread title, topic, search snippet, AI reply or tool
output runs in the web UI.

The browser context bypasses the page's Content-Security-Policy on purpose: the CSP would block
most of these payloads by itself, and this test is about the sanitising (marked with raw HTML
escaped, then DOMPurify; textContent for plain fields). A payload that ran would open an alert
dialog or request /xss-beacon/; the test also audits the rendered DOM for anything active."""

from __future__ import annotations

import time
from collections.abc import Callable

from playwright.sync_api import Browser, Dialog, Page, Request, expect

from tests.e2e.conftest import Api, E2EServer, login, new_context_as
from tests.e2e.server import ECHO, TOOL_XSS
from tests.e2e.test_ui import ai_messages, messages, open_thread, wait_until
from tests.e2e.xss_payloads import PAYLOADS

SALES_CSV = b"region,amount\nnorth,10\nsouth,25\n"

# Everything in these parts of the page came from users, models or tools.
UNTRUSTED = "#thread-list, #thread-head, .thread-head, #messages, #search-results"

AUDIT = """(selector) => {
    const problems = [];
    const risky = "script, iframe, object, embed, svg, math, style, link, meta, base, form, "
        + "frame, frameset, template, video, audio, source, img:not(.artifact img), noscript";
    for (const root of document.querySelectorAll(selector)) {
        for (const node of root.querySelectorAll("*")) {
            if (node.matches(risky)) problems.push("element " + node.outerHTML.slice(0, 120));
            for (const attribute of node.attributes) {
                const name = attribute.name.toLowerCase();
                const value = attribute.value.replace(/[\\s\\u0000-\\u001f]/g, "").toLowerCase();
                if (name.startsWith("on")) problems.push("handler " + name + " on " + node.tagName);
                if (["href", "src", "action", "formaction", "xlink:href", "srcdoc"].includes(name)
                    && /^(javascript|vbscript|data):/.test(value)) {
                    problems.push("url " + name + "=" + attribute.value.slice(0, 80));
                }
                if (name === "style") problems.push("style on " + node.tagName);
            }
        }
    }
    return problems;
}"""


def scrolled_to_top(page: Page) -> int:
    """Scroll the message list to its top (which loads an older page); the messages shown."""
    page.locator("#messages").evaluate("box => { box.scrollTop = 0; }")
    time.sleep(0.2)
    return messages(page).count()


def test_payloads_are_shown_as_text_and_never_run(
    browser: Browser, e2e_server: E2EServer, api: Callable[[str], Api]
) -> None:
    alice = api("alice")
    # Titles, topics and file names carry payloads too (all through the public API).
    topic = alice.ok("POST", "/topics/", json={"name": PAYLOADS[2][:100]})
    thread = alice.thread_create(PAYLOADS[0], members=("bob",), topicIds=[topic["id"]])
    titled = [alice.thread_create(payload[:200])["id"] for payload in PAYLOADS[:12]]
    assert titled
    for payload in PAYLOADS:
        alice.message_post(thread["id"], payload, reply=False)
    files = [
        alice.file_upload(f"{payload[:80]}.txt", b"hello", "text/plain")
        for payload in PAYLOADS[:10]
    ]
    alice.message_post(
        thread["id"], "files with odd names", fileIds=[f["id"] for f in files], reply=False
    )
    # The model's own output: the scripted model echoes payloads back as its reply.
    echoes = [
        alice.message_post(thread["id"], ECHO + payload, reply=True)["reply"]["messageId"]
        for payload in PAYLOADS[:20:2]
    ]
    for message_id in echoes:
        assert alice.wait_reply(message_id)["status"] == "complete"
    # Tool output: the crew double puts the payload into a summary, chart and table titles.
    data = alice.file_upload("sales.csv", SALES_CSV)
    crew = alice.message_post(
        thread["id"],
        TOOL_XSS + PAYLOADS[3],
        reply=True,
        modelId=e2e_server.models["e2e-crew"],
        fileIds=[data["id"]],
    )
    assert alice.wait_reply(crew["reply"]["messageId"], timeout=90)["status"] == "complete"
    artifacts = alice.ok("GET", f"/threads/{thread['id']}/artifacts/")["artifacts"]
    assert {a["kind"] for a in artifacts} >= {"chart", "table", "summary"}

    # bob reads it all in a browser with the CSP switched off.
    context, page = new_context_as(browser, e2e_server, "bob", bypass_csp=True)
    dialogs: list[str] = []
    beacons: list[str] = []

    def dismiss(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)

    def watch(request: Request) -> None:
        if "xss-beacon" in request.url or request.url.startswith(("javascript:", "vbscript:")):
            beacons.append(request.url)

    page.on("request", watch)
    try:
        page.reload()
        expect(page.locator(f'[data-thread-id="{thread["id"]}"]')).to_be_visible()
        open_thread(page, thread["id"])
        expected = len(PAYLOADS) + 1 + 2 * len(echoes) + 2
        wait_until(lambda: scrolled_to_top(page) >= expected, what="every message loaded")
        reply_box = ai_messages(page).last
        expect(reply_box.get_by_test_id("artifact")).to_have_count(len(artifacts))
        # Summaries are fetched and rendered after the message: wait for them.
        wait_until(
            lambda: "Loading" not in reply_box.locator(".artifact-summary").inner_text(),
            what="the summary",
        )
        # Search snippets and file names.
        page.get_by_test_id("search").fill("onerror")
        expect(page.get_by_test_id("search-hit").first).to_be_visible()
        wait_until(
            lambda: page.get_by_test_id("attachment").filter(has_text=".txt").count() == len(files),
            what="file names",
        )
        # Hover and focus everything, as a reader would.
        for link in page.locator("#messages a").all()[:200]:
            link.hover(timeout=2000)
        time.sleep(1)

        assert dialogs == [], dialogs
        assert beacons == [], beacons
        problems = page.evaluate(AUDIT, UNTRUSTED)
        assert problems == [], problems[:20]

        # And they are there, as text: a few that would have vanished as markup.
        body = page.locator("#messages").inner_text()
        for visible in (
            "<script>alert(1)</script>",
            "<img src=x onerror=alert(2)>",
            "<svg onload=alert(4)>",
        ):
            assert visible in body, visible
        expect(page.get_by_test_id("thread-title")).to_have_text(PAYLOADS[0])
        titles = page.get_by_test_id("thread-list").inner_text()
        assert "<img src=x onerror=alert(2)>" in titles
        # A javascript: link in Markdown keeps its text but loses the link.
        for anchor in page.locator("#messages a").all():
            href = (anchor.get_attribute("href") or "").strip().lower()
            assert href.startswith(("http:", "https:", "mailto:", "/", "#")) or href == "", href
    finally:
        context.close()


def test_the_page_csp_blocks_inline_script_even_if_markup_got_in(
    page: Page, e2e_server: E2EServer
) -> None:
    """Defence in depth: with the CSP on, even markup written straight into the page by
    the test cannot run inline code."""
    user = e2e_server.users["alice"]
    login(page, e2e_server.url, user.username, user.password)
    dialogs: list[str] = []

    def dismiss(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", dismiss)
    page.evaluate(
        """() => {
            const box = document.createElement("div");
            box.innerHTML = '<img src="x" onerror="alert(1)">';
            document.body.append(box);
        }"""
    )
    time.sleep(0.5)
    assert dialogs == []
