"""The page survives a server restart in the middle of a reply: it says it is offline, comes
back by itself, and ends showing exactly what the server stored for the interrupted reply
(failed, or re-run by the reaper), then works as before."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.e2e.conftest import Api, E2EServer
from tests.e2e.test_ui import ai_messages, open_thread, send, sign_in

FINISHED = ("complete", "failed", "cancelled")


def test_the_page_reconnects_after_a_server_restart_mid_reply(
    page: Page, e2e_server: E2EServer, api: Callable[[str], Api]
) -> None:
    thread = api("alice").thread_create("Restart")
    sign_in(page, e2e_server)
    open_thread(page, thread["id"])
    page.evaluate(
        """() => {
            window.__wasOffline = false;
            const banner = document.querySelector('[data-testid="offline"]');
            new MutationObserver(() => { if (!banner.hidden) window.__wasOffline = true; })
                .observe(banner, {attributes: true});
        }"""
    )
    send(page, "a slow answer please")
    reply = ai_messages(page).first
    expect(reply.get_by_test_id("message-body")).to_contain_text("word2", timeout=15000)
    message_id = reply.get_attribute("data-message-id") or ""

    e2e_server.restart()  # the embedded worker dies with the process, mid-reply

    expect(page.get_by_test_id("offline")).to_be_hidden(timeout=20000)
    assert page.evaluate("window.__wasOffline") is True
    # The reaper settles the orphaned reply; the page learns it from the replayed events.
    stored = api("alice").wait_reply(message_id, timeout=60)
    assert stored["status"] in FINISHED
    expect(reply).to_have_attribute("data-status", stored["status"], timeout=20000)
    expect(reply.get_by_test_id("message-body")).to_have_text(stored["text"].strip())

    send(page, "are you back?")
    expect(ai_messages(page)).to_have_count(2, timeout=10000)
    latest = ai_messages(page).last
    expect(latest).to_have_attribute("data-status", "complete", timeout=30000)
    expect(latest.get_by_test_id("message-body")).to_contain_text("are you back?")
