"""The top bar shows what the caller's budgets have left, and it goes down with a priced reply.
The e2e server gives every user a monthly budget of 500 (BUDGET_MONTHLY in conftest)."""

from __future__ import annotations

import re
from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.e2e.conftest import Api, E2EServer, shot
from tests.e2e.test_ui import open_thread, sign_in


def test_the_top_bar_shows_the_monthly_budget_and_a_reply_spends_from_it(
    page: Page, e2e_server: E2EServer, api: Callable[[str], Api]
) -> None:
    bob = api("bob")
    thread = bob.thread_create("Budget")
    sign_in(page, e2e_server, "bob")
    budget = page.get_by_test_id("budget-item")
    expect(budget).to_have_count(1)
    expect(budget).to_have_text("This month $500.00 left")
    expect(budget).to_have_attribute("title", re.compile(r"per month; resets "))
    shot(page, "top-bar-budget")
    open_thread(page, thread["id"])
    priced = e2e_server.models["e2e-priced"]
    posted = bob.message_post(thread["id"], "What does it cost?", reply=True, modelId=priced)
    bob.wait_reply(posted["reply"]["messageId"])
    # The top bar refreshes the balance (and the budgets with it) when a reply ends.
    expect(budget).to_have_text(re.compile(r"^This month \$49\d\.\d+ left$"))
    shot(page, "top-bar-budget-spent")
