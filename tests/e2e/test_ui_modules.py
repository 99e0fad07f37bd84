"""The web UI as ES modules under the production static storage (hashed names, hashed imports,
cached for good) and the strict CSP; opening threads in quick succession; a long Markdown
reply streamed in."""

from __future__ import annotations

import re
from collections.abc import Callable

from playwright.sync_api import ConsoleMessage, Locator, Page, Response, Route, expect

from tests.e2e.conftest import REPO, Api, E2EServer, shot
from tests.e2e.test_ui import REPLY_PREFIX, ai_messages, messages, open_thread, send, sign_in


def bodies(page: Page) -> Locator:
    return page.get_by_test_id("message-body")


HASHED_MODULE = re.compile(r"/static/threadline/app/(\w+)\.[0-9a-f]{12}\.js$")


def test_the_page_runs_as_hashed_es_modules_under_the_csp(
    page: Page, e2e_server: E2EServer
) -> None:
    responses: list[Response] = []
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            problems.append(message.text)

    page.on("response", lambda response: responses.append(response))
    page.on("console", console)
    page.on("pageerror", lambda error: problems.append(str(error)))
    sign_in(page, e2e_server)
    # The modules ran: the model picker is filled from the API.
    expect(page.locator("#model option").first).to_be_attached()

    modules = [r for r in responses if "/static/threadline/app/" in r.url]
    # Every import was rewritten to its hashed name, so each module came once, from the URL
    # its modulepreload fetched, and may be cached for good.
    assert all(HASHED_MODULE.search(r.url) for r in modules), [r.url for r in modules]
    fetched = sorted(m.group(1) for r in modules if (m := HASHED_MODULE.search(r.url)))
    assert fetched == sorted(p.stem for p in (REPO / "static/threadline/app").glob("*.js"))
    for response in modules:
        assert response.status == 200, response.url
        assert "immutable" in response.headers["cache-control"], response.headers
    assert problems == []


def test_a_slow_first_open_does_not_overwrite_a_later_one(
    page: Page, e2e_server: E2EServer, api: Callable[[str], Api]
) -> None:
    alice = api("alice")
    slow = alice.thread_create("Slow to open")
    later = alice.thread_create("Opened later")
    alice.message_post(slow["id"], "a line in the slow thread")
    alice.message_post(later["id"], "a line in the later thread")
    sign_in(page, e2e_server)

    # The first click's thread request is held until the second thread is open.
    held: list[Route] = []
    thread_url = f"**/api/v1/threads/{slow['id']}/"
    page.route(thread_url, lambda route: held.append(route))
    with page.expect_request(lambda request: request.url.endswith(f"/threads/{slow['id']}/")):
        page.locator(f'[data-thread-id="{slow["id"]}"]').click()
    open_thread(page, later["id"])
    expect(bodies(page)).to_have_text(["a line in the later thread"])

    with page.expect_response(lambda response: response.url.endswith(f"/threads/{slow['id']}/")):
        held[0].continue_()
    page.unroute(thread_url)
    page.wait_for_timeout(1000)  # what the slow open would have drawn, it would have by now
    expect(page.get_by_test_id("thread-title")).to_have_text("Opened later")
    expect(bodies(page)).to_have_text(["a line in the later thread"])
    expect(page.locator(f'[data-thread-id="{later["id"]}"]')).to_have_attribute(
        "aria-current", "true"
    )
    assert page.url.endswith(f"#{later['id']}")

    # The later thread is live too: its socket subscription was not taken over.
    alice.message_post(later["id"], "said after both opens")
    expect(messages(page)).to_have_count(2)


# (No "slow" in it: that word makes the scripted model stream a different reply.)
# Every kind of block, with a blank line inside a code fence followed by what would be a
# heading outside one, and enough words after the table to keep the reply streaming a while.
LONG_MARKDOWN = "\n".join(
    [
        "a plan in parts.",
        "",
        "## The plan",
        "",
        "First we **measure** what takes time, then we fix it, then we measure again to be sure.",
        "",
        "- one loose item",
        "",
        "- two loose items",
        "",
        "- three loose items",
        "",
        'Inline <img src=x onerror="window.__ran=1"> stays text, and '
        "[a link](https://example.com/) stays a link.",
        "",
        "```",
        "def fix():",
        "",
        "# not a heading",
        "    return 42",
        "```",
        "",
        "| part | cost |",
        "|---|---|",
        "| parse | once |",
        "| draw | often |",
        "",
        "> quoted advice that spans a few words so the reply keeps streaming a while",
        "",
        "1. first numbered step with some words",
        "2. second numbered step with more words",
        "",
        "The end of a long reply, " + " ".join(f"tail{i}" for i in range(60)) + ".",
    ]
)


def test_a_long_markdown_reply_streams_block_by_block_and_ends_as_a_reload_shows_it(
    page: Page, e2e_server: E2EServer, api: Callable[[str], Api]
) -> None:
    thread = api("alice").thread_create("Long reply")
    sign_in(page, e2e_server)
    open_thread(page, thread["id"])
    # Never, while it streams, is the code fence's `# not a heading` drawn as a heading.
    page.evaluate(
        """() => {
            window.__sawH1 = false;
            new MutationObserver(() => {
                if (document.querySelector("li.msg.ai .body h1")) window.__sawH1 = true;
            }).observe(document.getElementById("message-list"), {subtree: true, childList: true});
        }"""
    )
    send(page, LONG_MARKDOWN)
    reply = ai_messages(page).first
    body = reply.get_by_test_id("message-body")

    # Once the blocks after it have started, the heading is a finished block: later draws
    # keep its node instead of parsing the reply again from the top.
    expect(body.locator("pre")).to_be_visible(timeout=30000)
    page.evaluate("() => { window.__h2 = document.querySelector('li.msg.ai .body h2'); }")
    expect(body.locator("blockquote")).to_be_visible(timeout=30000)
    assert page.evaluate("() => !!window.__h2 && window.__h2.isConnected")
    assert reply.get_attribute("data-status") == "streaming"

    expect(reply).to_have_attribute("data-status", "complete", timeout=30000)
    expect(body).to_contain_text("tail59.")
    assert page.evaluate("() => window.__sawH1") is False
    expect(body.locator("h2")).to_have_text("The plan")
    expect(body.locator("ul > li")).to_have_count(3)
    expect(body.locator("pre code")).to_have_text("def fix():\n\n# not a heading\n    return 42\n")
    expect(body.locator("td")).to_have_text(["parse", "once", "draw", "often"])
    expect(body.locator("ol > li")).to_have_count(2)
    expect(body).to_contain_text('Inline <img src=x onerror="window.__ran=1"> stays text')
    expect(body.locator("img")).to_have_count(0)
    expect(body.locator("a")).to_have_attribute("href", "https://example.com/")
    assert page.evaluate("() => window.__ran") is None
    expect(body.locator("p").first).to_have_text(REPLY_PREFIX + "a plan in parts.")
    shot(page, "long-reply")

    # What it ended as is exactly what the stored reply renders as after a reload.
    streamed = body.inner_html()
    page.reload()
    open_thread(page, thread["id"])
    expect(ai_messages(page).first).to_have_attribute("data-status", "complete")
    assert ai_messages(page).first.get_by_test_id("message-body").inner_html() == streamed
