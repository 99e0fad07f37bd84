"""Budgets: daily and monthly limits of money and tokens, per user and per group, checked when
a reply is asked for, before any model is called (agents.services.budgets)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from agents import selectors, services
from agents.models import Account, AgentRun, AIModel, Budget, LedgerEntry
from agents.services import conversation
from agents.services.budgets import budget_reserve, budgets_changed
from messaging.models import Message
from tests.agents.crew_support import crew_script  # noqa: F401 - the fixture, shared
from tests.conftest import Cast
from tests.factories import ThreadFactory, UserFactory
from tests.helpers import assert_error, db_state, load_settings
from tests.messaging.compat.conftest import act, http, tokens  # noqa: F401 - fixtures, shared
from threads.errors import BudgetExceeded
from threads.models import Thread, User

pytestmark = pytest.mark.django_db(transaction=True)

# The priced model's reservation: 900 prompt tokens at 1.00/1k + 100 out at 2.00/1k = 1.10,
# and its whole context window, 1000 tokens.
RESERVE = Decimal("1.10")
WINDOW = 1000
EVENING = datetime(2026, 12, 3, 18, 0, tzinfo=UTC)


@dataclass
class Clock:
    now: datetime

    def set(self, year: int, month: int, day: int, hour: int) -> None:
        self.now = datetime(year, month, day, hour, tzinfo=UTC)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Django's `timezone.now` (which auto_now_add and the budget periods read), held still."""
    held = Clock(EVENING)
    monkeypatch.setattr("django.utils.timezone.now", lambda: held.now)
    return held


@pytest.fixture
def priced(cast: Cast) -> AIModel:
    model = AIModel.objects.create(
        name="Priced",
        provider="local",
        context_window=WINDOW,
        max_output_tokens=100,
        price_input_per_1k=Decimal("1.000000"),
        price_output_per_1k=Decimal("2.000000"),
        available_to_all=True,
        agent_mode="core",
    )
    for user in (cast.alice, cast.bob, cast.charlie):
        services.credit_add(user=user, amount=Decimal("100.00"), note="plenty")
    return model


def budget(**fields: Any) -> Budget:
    """A Budget row as the admin makes one (it clears the "no budgets" flag on commit)."""
    with transaction.atomic():
        row = Budget.objects.create(**fields)
        budgets_changed()
    return row


def ask(cast: Cast, user: User, *, thread: Thread | None = None, model: str = "Priced") -> Any:
    return cast.client(user).post(
        f"/api/v1/threads/{(thread or cast.thread).pk}/messages/",
        {"text": "How much?", "reply": True, "modelId": model},
        format="json",
    )


def accepted(response: Any) -> bool:
    assert response.status_code in (201, 429), (response.status_code, response.content[:300])
    return response.status_code == 201


# --- the refusal ----------------------------------------------------------------------------


def test_a_reply_over_the_daily_budget_is_refused_with_no_side_effect(
    cast: Cast, priced: AIModel, clock: Clock, queued: list[dict[str, Any]]
) -> None:
    budget(user=cast.alice, period="day", amount=Decimal("2.00"))
    assert accepted(ask(cast, cast.alice))  # holds 1.10 while it waits in the queue
    before = db_state()

    response = ask(cast, cast.alice)

    error = assert_error(response, 429, "budget_exceeded")
    assert error["message"] == (
        "This reply could exceed your daily budget (2.00): 1.10 is spent or held today, and "
        "this reply may cost up to 1.10. It resets at 2026-12-04 00:00 (UTC)."
    )
    assert response["Retry-After"] == str(6 * 3600)  # 18:00 to midnight UTC
    # No question, no AI message, no run, no reservation, no event: nothing was written.
    assert db_state() == before
    assert len(queued) == 1
    assert Message.objects.count() == 2 and AgentRun.objects.count() == 1


def test_settled_replies_count_their_charge_and_unfinished_ones_their_reservation(
    cast: Cast, priced: AIModel, clock: Clock, scripted_llm: Any
) -> None:
    budget(user=cast.alice, period="day", amount=Decimal("1.20"))
    # Each reply runs at commit (eager) and is charged its few tokens, well under 1.10.
    assert accepted(ask(cast, cast.alice))
    assert accepted(ask(cast, cast.alice))
    runs = AgentRun.objects.filter(requested_by=cast.alice)
    assert {run.status for run in runs} == {AgentRun.Status.COMPLETE}
    charged = sum(run.cost for run in runs)
    assert 0 < charged < Decimal("0.10")
    [state] = selectors.budget_status(user=cast.alice)
    assert state.spent == charged
    assert state.tokens_spent == sum(run.prompt_tokens + run.completion_tokens for run in runs)


def test_the_daily_and_the_monthly_budget_each_refuse_and_each_reset(
    cast: Cast, priced: AIModel, clock: Clock, queued: list[dict[str, Any]]
) -> None:
    budget(user=cast.alice, period="day", amount=Decimal("2.50"))
    budget(user=cast.alice, period="month", amount=Decimal("3.00"))
    clock.set(2026, 12, 30, 12)
    assert accepted(ask(cast, cast.alice))
    assert accepted(ask(cast, cast.alice))
    refused = ask(cast, cast.alice)
    assert "your daily budget (2.50)" in assert_error(refused, 429, "budget_exceeded")["message"]
    assert refused["Retry-After"] == str(12 * 3600)

    clock.set(2026, 12, 31, 1)  # a new day: 2.20 held this month, none today
    refused = ask(cast, cast.alice)
    error = assert_error(refused, 429, "budget_exceeded")
    assert error["message"].startswith(
        "This reply could exceed your monthly budget (3.00): 2.20 is spent or held this month"
    )
    assert "It resets at 2027-01-01 00:00 (UTC)." in error["message"]
    assert refused["Retry-After"] == str(23 * 3600)

    clock.set(2027, 1, 1, 0)  # a new month, and a new day
    assert accepted(ask(cast, cast.alice))
    assert AgentRun.objects.filter(requested_by=cast.alice).count() == 3


def test_a_group_budget_is_shared_by_its_members_only(
    cast: Cast, priced: AIModel, clock: Clock, queued: list[dict[str, Any]]
) -> None:
    team = Group.objects.create(name="team")
    team.user_set.add(cast.alice, cast.bob)
    budget(group=team, period="month", amount=Decimal("2.50"))

    assert accepted(ask(cast, cast.alice))
    assert accepted(ask(cast, cast.bob))
    refused = ask(cast, cast.bob)
    error = assert_error(refused, 429, "budget_exceeded")
    assert error["message"].startswith(
        "This reply could exceed the monthly budget of group 'team' (2.50): 2.20 is spent or "
        "held this month"
    )
    to_the_first = datetime(2027, 1, 1, tzinfo=UTC) - EVENING
    assert refused["Retry-After"] == str(int(to_the_first.total_seconds()))
    assert_error(ask(cast, cast.alice), 429, "budget_exceeded")
    # charlie is not in the group: his own reply, in his own thread, is not limited by it.
    own = ThreadFactory.create(creator=cast.charlie)
    assert accepted(ask(cast, cast.charlie, thread=own))


def test_a_token_budget_counts_each_replys_context_window_until_it_ends(
    cast: Cast, priced: AIModel, clock: Clock, queued: list[dict[str, Any]]
) -> None:
    budget(user=cast.alice, period="day", tokens=1500)
    assert accepted(ask(cast, cast.alice))
    error = assert_error(ask(cast, cast.alice), 429, "budget_exceeded")
    assert error["message"] == (
        "This reply could exceed your daily token budget (1500 tokens): 1000 tokens are used "
        "or held today, and this reply may use up to 1000. It resets at 2026-12-04 00:00 (UTC)."
    )
    run = AgentRun.objects.get(requested_by=cast.alice)
    assert run.reserved_tokens == WINDOW


def test_one_reply_bigger_than_the_whole_budget_says_so(
    cast: Cast, priced: AIModel, clock: Clock
) -> None:
    budget(user=cast.alice, period="day", amount=Decimal("1.00"))
    error = assert_error(ask(cast, cast.alice), 429, "budget_exceeded")
    assert error["message"].endswith("One reply with this model needs more than the whole budget.")


@override_settings(BUDGET_DAILY=Decimal("1.00"))
def test_the_default_applies_to_everyone_unless_a_user_has_their_own(
    cast: Cast, priced: AIModel, clock: Clock, queued: list[dict[str, Any]]
) -> None:
    assert_error(ask(cast, cast.alice), 429, "budget_exceeded")
    assert_error(ask(cast, cast.bob), 429, "budget_exceeded")
    budget(user=cast.alice, period="day", amount=Decimal("5.00"))
    assert accepted(ask(cast, cast.alice))
    assert_error(ask(cast, cast.bob), 429, "budget_exceeded")


def test_a_refused_regeneration_changes_nothing(
    cast: Cast, priced: AIModel, clock: Clock, scripted_llm: Any
) -> None:
    budget(user=cast.alice, period="day", tokens=1500)
    reply = ask(cast, cast.alice).json()["reply"]
    # The first reply used a few tokens; a second reservation of 1000 does not fit 1500.
    budget_row = Budget.objects.get(user=cast.alice)
    budget_row.tokens = 1000
    budget_row.save()
    before = db_state()
    response = cast.client(cast.alice).post(f"/api/v1/messages/{reply['messageId']}/regenerate/")
    assert_error(response, 429, "budget_exceeded")
    assert db_state() == before


@override_settings(CREW_MAX_STEPS=40, CREW_MAX_TOOL_CALLS=60)
def test_a_crew_on_a_free_model_stops_before_its_tokens_pass_what_it_holds(
    cast: Cast,
    crew_script: Any,  # noqa: F811 - the shared fixture imported above
) -> None:
    """Money never stops a crew on a free model; the tokens it holds (for token budgets) do."""
    from tests.agents.crew_support import ask_crew
    from tests.agents.scripted_crew_llm import tool_call
    from tests.helpers import upload

    model = AIModel.objects.create(
        name="Free",
        provider="local",
        context_window=400,
        max_output_tokens=200,
        available_to_all=True,
        supports_tools=True,
    )
    csv = b"region,amount\nNorth,10\nSouth,5\n"
    file_id = upload(cast.client(cast.alice), "sales.csv", csv, "text/csv").json()["id"]
    wordy = "I must look again at every column and every row. " * 8
    crew_script.replies = {
        "planner": ["SPECIALISTS: analyst"],
        "analyst": [
            tool_call(
                "analyse_table", thought=wordy, file="sales.csv", group_by="region", how=f"s{i}"
            )
            for i in range(40)
        ],
    }
    response = ask_crew(cast, "Total the sales data", [file_id], modelId=model.pk)
    run = AgentRun.objects.get(pk=response.json()["reply"]["runId"])
    assert run.reserved == 0 and run.reserved_tokens == 400 * services.CREW_RESERVED_CALLS
    assert run.error == "This reply reached the most tokens it may use and was stopped."
    assert run.prompt_tokens + run.completion_tokens <= run.reserved_tokens


# --- settings ------------------------------------------------------------------------------


def test_the_defaults_are_unset_and_read_as_amounts_and_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    names = ("BUDGET_DAILY", "BUDGET_MONTHLY", "BUDGET_DAILY_TOKENS", "BUDGET_MONTHLY_TOKENS")
    loaded = load_settings(monkeypatch, {})
    assert [loaded[name] for name in names] == [None, None, None, None]
    env = {"BUDGET_DAILY": "0.50", "BUDGET_MONTHLY": " ", "BUDGET_DAILY_TOKENS": "20000"}
    loaded = load_settings(monkeypatch, env)
    assert [loaded[name] for name in names] == [Decimal("0.50"), None, 20000, None]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BUDGET_DAILY", "ten"),
        ("BUDGET_DAILY", "-1"),
        ("BUDGET_MONTHLY", "NaN"),
        ("BUDGET_DAILY_TOKENS", "1.5"),
        ("BUDGET_MONTHLY_TOKENS", "-3"),
    ],
)
def test_a_bad_budget_value_stops_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    with pytest.raises(ImproperlyConfigured, match=name):
        load_settings(monkeypatch, {name: value})


# --- the common case: no budgets ------------------------------------------------------------


def test_without_budgets_the_check_costs_one_cache_read_and_no_query(cast: Cast) -> None:
    with transaction.atomic():
        with CaptureQueriesContext(connection) as first:
            budget_reserve(user=cast.alice, amount=RESERVE, tokens=WINDOW)
        with CaptureQueriesContext(connection) as then:
            budget_reserve(user=cast.alice, amount=RESERVE, tokens=WINDOW)
    assert len(first) == 1  # "are there any Budget rows?", then remembered in the cache
    assert len(then) == 0
    assert selectors.budget_status(user=cast.alice) == []


# --- where budgets are shown ----------------------------------------------------------------


def test_me_lists_every_budget_with_what_is_left_and_when_it_resets(
    cast: Cast, priced: AIModel, clock: Clock, queued: list[dict[str, Any]]
) -> None:
    assert cast.client(cast.alice).get("/api/v1/me/").json()["budgets"] == []
    team = Group.objects.create(name="team")
    team.user_set.add(cast.alice)
    budget(group=team, period="month", amount=Decimal("50.00"), tokens=100_000)
    with override_settings(BUDGET_DAILY=Decimal("5.00")):
        assert accepted(ask(cast, cast.alice))
        budgets = cast.client(cast.alice).get("/api/v1/me/").json()["budgets"]
    assert budgets == [
        {
            "scope": "user",
            "group": None,
            "period": "day",
            "limit": "5.000000",
            "spent": "1.100000",
            "remaining": "3.900000",
            "tokenLimit": None,
            "tokensSpent": 1000,
            "tokensRemaining": None,
            "resetsAt": "2026-12-04T00:00:00Z",
        },
        {
            "scope": "group",
            "group": "team",
            "period": "month",
            "limit": "50.000000",
            "spent": "1.100000",
            "remaining": "48.900000",
            "tokenLimit": 100_000,
            "tokensSpent": 1000,
            "tokensRemaining": 99_000,
            "resetsAt": "2027-01-01T00:00:00Z",
        },
    ]


def test_the_web_ui_top_bar_has_a_place_for_budgets(cast: Cast) -> None:
    from django.test import Client

    client = Client()
    client.force_login(cast.alice)
    page = client.get("/").content.decode()
    assert 'id="budget"' in page


def test_the_admin_lists_budgets_with_their_spending_and_its_changes_apply_at_once(
    cast: Cast, priced: AIModel, clock: Clock, queued: list[dict[str, Any]]
) -> None:
    from django.test import Client

    admin = Client()
    admin.force_login(cast.admin)
    assert accepted(ask(cast, cast.alice))  # no budgets yet: remembered as such in the cache
    add = admin.post(
        "/admin/agents/budget/add/",
        {"user": cast.alice.pk, "period": "day", "amount": "2.00", "tokens": ""},
    )
    assert add.status_code == 302, add.content.decode()[:2000]
    # The admin's change cleared the "no budgets" flag: the next reply is checked at once.
    assert_error(ask(cast, cast.alice), 429, "budget_exceeded")

    listing = admin.get("/admin/agents/budget/")
    assert listing.status_code == 200
    assert "1.10 of 2.00; resets 2026-12-04 00:00 UTC" in listing.content.decode()
    row = Budget.objects.get()
    change = admin.get(f"/admin/agents/budget/{row.pk}/change/")
    assert change.status_code == 200
    assert "1.10 of 2.00" in change.content.decode()
    # Neither a user nor a group (or both), or no limit at all: the form says so, no 500.
    for bad in (
        {"period": "day", "amount": "1"},
        {"user": cast.bob.pk, "period": "day"},
        {"user": cast.alice.pk, "period": "day", "amount": "3"},  # alice has a daily one
    ):
        answer = admin.post("/admin/agents/budget/add/", bad)
        assert answer.status_code == 200, bad
        assert "errornote" in answer.content.decode()
    assert Budget.objects.count() == 1
    delete = admin.post(f"/admin/agents/budget/{row.pk}/delete/", {"post": "yes"})
    assert delete.status_code == 302
    assert accepted(ask(cast, cast.alice))


# --- the other doors' shapes ----------------------------------------------------------------


@override_settings(BUDGET_DAILY_TOKENS=100)
def test_chat_svc_gets_429_with_retry_after_in_its_own_error_shape(
    cast: Cast, clock: Clock
) -> None:
    Thread.objects.filter(pk=cast.thread.pk).update(ai_reply=True)
    before = Message.objects.count()
    response = cast.client(cast.bob).post(
        f"/chat-svc/thread/{cast.thread.pk}/message", {"text": "hi AI"}, format="json"
    )
    assert response.status_code == 429
    assert response["Retry-After"] == str(6 * 3600)
    body = response.json()
    assert set(body) == {"error"} and "daily token budget (100 tokens)" in body["error"]
    assert Message.objects.count() == before


@override_settings(BUDGET_DAILY_TOKENS=100)
async def test_the_bff_stream_is_refused_before_it_starts(
    cast: Cast,
    http: Any,  # noqa: F811 - the shared fixture imported above
    clock: Clock,
) -> None:
    answer = await http(
        "POST",
        "/api/v1/chat/messages",
        user="alice",
        json_body={"sessionId": cast.thread.pk, "message": "hi"},
    )
    assert answer.status == 429
    assert answer.headers[b"retry-after"] == str(6 * 3600).encode()
    error = (await answer.json())["error"]
    assert error["code"] == "budget_exceeded" and "token budget" in error["message"]
    assert await act(Message.objects.count) == 0


@override_settings(BUDGET_DAILY_TOKENS=100)
async def test_ai_at_work_gets_an_error_frame(
    cast: Cast,
    tokens: dict[str, str],  # noqa: F811 - the shared fixture imported above
) -> None:
    from channels.testing import WebsocketCommunicator

    from chatproject.asgi import application

    comm = WebsocketCommunicator(application, f"/ws?token={tokens['alice']}")
    connected, _ = await comm.connect(timeout=5)
    assert connected
    try:
        frame = {"type": 3, "data": {"session_id": cast.thread.pk, "message": "hi"}}
        await comm.send_to(text_data=json.dumps(frame))
        answer = await comm.receive_json_from(timeout=5)
    finally:
        await comm.disconnect()
    assert set(answer) == {"error"}
    assert answer["error"].startswith(
        "This reply could exceed your daily token budget (100 tokens)"
    )
    assert await act(Message.objects.count) == 0


# --- under real concurrency (PostgreSQL) ----------------------------------------------------


def _all_at_once(count: int, work: Callable[[int], None]) -> list[str]:
    """`work(i)` in `count` threads, each with its own connection, released together."""
    outcomes: list[str] = []
    gate = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            gate.wait()
            work(index)
            outcomes.append("ok")
        except BudgetExceeded:
            outcomes.append("budget")
        except Exception as exc:  # counted, and the test fails on it
            outcomes.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def _spent(users: list[User]) -> Decimal:
    return sum(
        (run.reserved for run in AgentRun.objects.filter(requested_by__in=users)), Decimal(0)
    )


def test_fifty_simultaneous_replies_never_overspend_a_user_budget(
    cast: Cast, priced: AIModel, queued: list[dict[str, Any]]
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks under real concurrency need PostgreSQL")
    limit = RESERVE * 10
    # A thread each, so the thread's lock does not line them up: only the account's may (the
    # default budget has no row to lock).
    threads = [ThreadFactory.create(creator=cast.alice) for _ in range(50)]

    def post(index: int) -> None:
        conversation.message_send(
            user=cast.alice, thread=threads[index], text="go", reply=True, model=priced
        )

    with override_settings(BUDGET_DAILY=limit):
        outcomes = _all_at_once(50, post)

    assert set(outcomes) <= {"ok", "budget"}, outcomes
    assert outcomes.count("ok") == 10
    assert _spent([cast.alice]) <= limit
    assert Message.objects.count() == 20  # each accepted question and its reply, no more
    account = Account.objects.get(user=cast.alice)
    assert account.balance == sum(e.amount for e in account.entries.all())
    assert LedgerEntry.objects.filter(kind="reserve").count() == 10


def test_fifty_simultaneous_replies_never_overspend_a_group_budget(
    cast: Cast, priced: AIModel, queued: list[dict[str, Any]]
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks under real concurrency need PostgreSQL")
    team = Group.objects.create(name="team")
    members = [UserFactory.create(username=f"member{i}") for i in range(10)]
    team.user_set.add(*members)
    for member in members:
        services.credit_add(user=member, amount=Decimal("100.00"))
    limit = RESERVE * 10
    budget(group=team, period="month", amount=limit)
    threads = [ThreadFactory.create(creator=members[i % 10]) for i in range(50)]

    def post(index: int) -> None:
        conversation.message_send(
            user=members[index % 10], thread=threads[index], text="go", reply=True, model=priced
        )

    outcomes = _all_at_once(50, post)

    assert set(outcomes) <= {"ok", "budget"}, outcomes
    assert outcomes.count("ok") == 10
    assert _spent(members) <= limit
    assert Message.objects.count() == 20
