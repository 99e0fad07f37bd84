"""The crew's run machinery with the scripted crew model (a test double): stop mid-crew, the
deployment's crew cap, the money limit, usage per agent and tool, and which mode answers."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any, ClassVar

import pytest
from django.conf import settings
from django.contrib.admin.utils import quote
from django.test import Client, override_settings
from django.utils import timezone

from agents import services
from agents.llm import LLMError
from agents.models import Account, AgentMode, AgentRun, AIModel, Artifact, CrewSlot, LedgerEntry
from messaging.models import Message, ThreadEvent
from tests.agents import crew_support
from tests.agents.crew_support import ask_crew, bare_run, priced_model
from tests.agents.scripted_crew_llm import CrewScript, ScriptedCrewLLM, final, tool_call
from tests.conftest import Cast
from tests.factories import ThreadFactory
from tests.helpers import IS_POSTGRES, post, upload
from threads.models import Thread

pytestmark = pytest.mark.django_db(transaction=True)

# Fixtures shared with the other crew tests.
crew_script = crew_support.crew_script

SALES_CSV = (
    b"region,product,amount\nNorth,apples,10\nSouth,pears,5\nNorth,pears,7.5\nEast,apples,2\n"
)
# See test_crew_isolation.py: two specialists run on two threads at once, which the in-memory
# shared-cache SQLite test database refuses ("database table is locked").
CONCURRENT = pytest.mark.skipif(
    not IS_POSTGRES,
    reason="concurrent specialists need PostgreSQL here: the in-memory shared-cache SQLite "
    "test database fails a second thread's queries with 'database table is locked'",
)
STOPPED_BUDGET = "This reply reached the most it may cost and was stopped."


def _sales(cast: Cast) -> str:
    return str(upload(cast.client(cast.alice), "sales.csv", SALES_CSV, "text/csv").json()["id"])


# --- stop ----------------------------------------------------------------------------------------


@override_settings(STREAM_SAVE_MS=50)
def test_stop_mid_crew_cancels_charges_once_and_frees_the_slot(
    cast: Cast, crew_script: CrewScript, published: list[dict[str, Any]]
) -> None:
    model = priced_model()
    services.credit_add(user=cast.alice, amount=Decimal("10"), note="enough for a crew")
    file_id = _sales(cast)
    crew_script.replies = {
        "planner": ["SPECIALISTS: analyst"],
        "analyst": [
            tool_call("analyse_table", file="sales.csv"),
            tool_call("analyse_table", file="sales.csv", group_by="region", value="amount"),
            tool_call("make_chart", file="sales.csv", group_by="region", value="amount"),
            final("North leads."),
        ],
        "writer": [final("North leads with 17.5.")],
    }
    seen: dict[str, Any] = {"analyst": 0}

    def press_stop(agent: str) -> None:
        if agent != "analyst":
            return
        seen["analyst"] += 1
        if seen["analyst"] == 2:
            run = AgentRun.objects.select_related("message").get(mode="crew")
            services.run_stop(message=run.message, actor=cast.alice)
            seen["calls_at_stop"] = len(crew_script.calls)
            time.sleep(0.4)  # the model is busy with this call; the worker notices the stop

    crew_script.before_call = press_stop
    response = ask_crew(cast, "Chart the sales total by region", [file_id], modelId=model.pk)
    assert response.status_code == 201, response.content
    run = AgentRun.objects.get(pk=response.json()["reply"]["runId"])
    assert run.status == AgentRun.Status.CANCELLED, run.error
    assert run.message.status == Message.Status.CANCELLED
    # The call in progress was the last: no further model call, the writer never ran.
    assert len(crew_script.calls) == seen["calls_at_stop"] + 1
    assert [agent for agent, _ in crew_script.calls] == ["planner", "analyst", "analyst"]
    assert not Artifact.objects.filter(run=run).exists()  # make_chart was never reached
    # Money: one reservation, one settlement, the charge is what the tokens cost.
    kinds = sorted(LedgerEntry.objects.filter(run=run).values_list("kind", flat=True))
    assert kinds == sorted([LedgerEntry.Kind.RESERVE, LedgerEntry.Kind.SETTLE])
    expected = services.reply_cost(
        model=model, prompt_tokens=run.prompt_tokens, completion_tokens=run.completion_tokens
    )
    assert run.prompt_tokens > 0 and run.cost == expected <= run.reserved
    balance = Account.objects.get(user=cast.alice).balance
    assert balance == Decimal("1.00") + Decimal("10") - run.cost
    # The slot is free again.
    assert not CrewSlot.objects.filter(run__isnull=False).exists()
    # Running the same run again (a redelivered task) changes nothing.
    services.run_execute(run_id=run.pk)
    assert LedgerEntry.objects.filter(run=run).count() == 2
    assert Account.objects.get(user=cast.alice).balance == balance
    completed = [e for e in published if e["type"] == "chatMessageCompleted"]
    assert [e["data"]["message"]["status"] for e in completed] == ["cancelled"]


# --- the crew cap ----------------------------------------------------------------------------


def _holder(cast: Cast, *, heartbeat_age: float = 0.0) -> AgentRun:
    """Another crew, running, that holds slot 0."""
    other = ThreadFactory.create(creator=cast.bob, title="Bob's busy crew")
    holder = bare_run(
        other,
        cast.bob,
        status=AgentRun.Status.RUNNING,
        heartbeat_at=timezone.now() - timedelta(seconds=heartbeat_age),
    )
    CrewSlot.objects.create(number=0, run=holder, taken_at=timezone.now())
    return holder


@override_settings(CREW_MAX_CONCURRENCY=1)
def test_a_crew_waits_for_a_free_slot_and_says_so(
    cast: Cast,
    crew_script: CrewScript,
    published: list[dict[str, Any]],
    queued: list[dict[str, Any]],
) -> None:
    holder = _holder(cast)
    crew_script.replies = {"planner": ["SPECIALISTS: researcher"], "writer": [final("Hi.")]}
    response = ask_crew(cast, "Where did we discuss the launch?")
    assert response.status_code == 201, response.content
    run_id = response.json()["reply"]["runId"]
    # On commit, to the crew queue.
    assert queued == [{"args": (run_id,), "queue": settings.CREW_QUEUE, "countdown": None}]

    services.run_execute(run_id=run_id)
    run = AgentRun.objects.get(pk=run_id)
    assert run.status == AgentRun.Status.QUEUED and run.attempts == 0
    assert crew_script.calls == []  # no model was called
    waiting = run.message.meta["waiting"]
    assert waiting["reason"] == "All 1 crews are busy; this reply waits."
    assert waiting["ahead"] == 0
    assert run.message.status == Message.Status.QUEUED
    steps = [e["data"] for e in published if e["type"] == "chatAgentStep"]
    assert [(s["agent"], s["step"], s["runId"]) for s in steps] == [("crew", "waiting", run_id)]
    assert steps[0]["detail"] == waiting["reason"]
    # Tried again later.
    assert queued[-1] == {
        "args": (run_id,),
        "queue": settings.CREW_QUEUE,
        "countdown": services.CREW_WAIT_SECONDS,
    }

    # Trying again while still busy says nothing new (no second note, no second event).
    services.run_execute(run_id=run_id)
    assert len([e for e in published if e["type"] == "chatAgentStep"]) == 1
    assert CrewSlot.objects.get(number=0).run_id == holder.pk

    # The holder finishes: the waiting crew takes the slot, runs, and the note goes.
    AgentRun.objects.filter(pk=holder.pk).update(status=AgentRun.Status.COMPLETE)
    services.run_execute(run_id=run_id)
    run = AgentRun.objects.get(pk=run_id)
    assert run.status == AgentRun.Status.COMPLETE, run.error
    assert "waiting" not in run.message.meta
    assert run.message.text.startswith("Hi.")
    assert not CrewSlot.objects.filter(run__isnull=False).exists()


@override_settings(CREW_MAX_CONCURRENCY=1)
def test_a_slot_held_by_a_silent_worker_is_taken_over(
    cast: Cast, crew_script: CrewScript, queued: list[dict[str, Any]]
) -> None:
    _holder(cast, heartbeat_age=settings.RUN_STALE_SECONDS + 5)
    crew_script.replies = {"planner": ["SPECIALISTS: researcher"], "writer": [final("Hi.")]}
    run_id = ask_crew(cast, "Where did we discuss it?").json()["reply"]["runId"]
    services.run_execute(run_id=run_id)
    run = AgentRun.objects.get(pk=run_id)
    assert run.status == AgentRun.Status.COMPLETE, run.error
    assert "waiting" not in run.message.meta


@override_settings(CREW_MAX_CONCURRENCY=1)
def test_the_wait_goes_back_to_the_crew_queue_with_a_countdown(
    cast: Cast, crew_script: CrewScript, queued: list[dict[str, Any]]
) -> None:
    """A waiting crew is re-queued on the crew queue with a countdown. (Eager Celery ignores
    countdown and would re-run at once, so the task is recorded here.)"""
    _holder(cast)
    run_id = ask_crew(cast, "Where did we discuss it?").json()["reply"]["runId"]
    services.run_execute(run_id=run_id)
    assert queued == [
        {"args": (run_id,), "queue": settings.CREW_QUEUE, "countdown": None},
        {
            "args": (run_id,),
            "queue": settings.CREW_QUEUE,
            "countdown": services.CREW_WAIT_SECONDS,
        },
    ]


# --- money -----------------------------------------------------------------------------------


@override_settings(CREW_MAX_STEPS=40, CREW_MAX_TOOL_CALLS=60)
def test_a_crew_that_would_cost_more_than_reserved_is_stopped_and_never_overcharged(
    cast: Cast, crew_script: CrewScript
) -> None:
    model = priced_model()
    services.credit_add(user=cast.alice, amount=Decimal("20"), note="top-up")
    file_id = _sales(cast)
    wordy = "I must look again at every column and every row. " * 8
    crew_script.replies = {
        "planner": ["SPECIALISTS: analyst"],
        "analyst": [
            # Different arguments each time: CrewAI ends an agent that repeats a call.
            tool_call(
                "analyse_table", thought=wordy, file="sales.csv", group_by="region", how=f"sum{i}"
            )
            for i in range(40)
        ],
        "writer": [final("Never reached.")],
    }
    response = ask_crew(cast, "Total the sales data", [file_id], modelId=model.pk)
    assert response.status_code == 201, response.content
    run = AgentRun.objects.get(pk=response.json()["reply"]["runId"])
    per_call = services.most_a_reply_can_cost(model)
    assert run.reserved == per_call * services.CREW_RESERVED_CALLS
    assert run.status == AgentRun.Status.FAILED
    assert run.error == STOPPED_BUDGET
    message = run.message
    assert message.status == Message.Status.FAILED
    assert message.meta["error"] == STOPPED_BUDGET
    assert "writer" not in [agent for agent, _ in crew_script.calls]
    # Never more than reserved; the charge is the tokens' price (capped by the reservation).
    tokens_cost = services.reply_cost(
        model=model, prompt_tokens=run.prompt_tokens, completion_tokens=run.completion_tokens
    )
    assert run.cost == min(tokens_cost, run.reserved)
    assert 0 < run.cost <= run.reserved
    account = Account.objects.get(user=cast.alice)
    assert account.balance == Decimal("1.00") + Decimal("20") - run.cost
    assert sum(e.amount for e in LedgerEntry.objects.filter(account=account)) == account.balance
    assert LedgerEntry.objects.filter(run=run).count() == 2
    assert Decimal(message.meta["usage"]["cost"]) == run.cost


@override_settings(CREW_MAX_STEPS=40, CREW_MAX_TOOL_CALLS=60)
def test_a_crew_stops_before_its_tokens_can_cost_more_than_reserved(
    cast: Cast, crew_script: CrewScript
) -> None:
    model = priced_model()
    services.credit_add(user=cast.alice, amount=Decimal("20"), note="top-up")
    file_id = _sales(cast)
    wordy = "I must look again at every column and every row. " * 8
    crew_script.replies = {
        "planner": ["SPECIALISTS: analyst"],
        "analyst": [
            # Different arguments each time: CrewAI ends an agent that repeats a call.
            tool_call(
                "analyse_table", thought=wordy, file="sales.csv", group_by="region", how=f"sum{i}"
            )
            for i in range(40)
        ],
    }
    response = ask_crew(cast, "Total the sales data", [file_id], modelId=model.pk)
    run = AgentRun.objects.get(pk=response.json()["reply"]["runId"])
    assert run.error == STOPPED_BUDGET
    # The crew stops before a call that could take its tokens past the reservation.
    tokens_cost = services.reply_cost(
        model=model, prompt_tokens=run.prompt_tokens, completion_tokens=run.completion_tokens
    )
    assert tokens_cost <= run.reserved, (tokens_cost, run.reserved)


def test_a_crew_the_balance_cannot_cover_is_refused_before_anything_runs(
    cast: Cast, crew_script: CrewScript
) -> None:
    model = priced_model()  # a crew reserves 8 calls: 8.8 here, and alice holds 1.00 + 5
    services.credit_add(user=cast.alice, amount=Decimal("5"), note="not enough for a crew")
    before = Message.objects.count()
    response = ask_crew(cast, "Total it", modelId=model.pk)
    assert response.status_code == 403, response.content
    assert Message.objects.count() == before
    assert crew_script.calls == []
    assert Account.objects.get(user=cast.alice).balance == Decimal("6.00")


# --- usage -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plan",
    [
        pytest.param(["analyst"], id="analyst"),
        pytest.param(["researcher", "analyst"], id="both-concurrently", marks=CONCURRENT),
    ],
)
def test_usage_per_agent_and_tool_is_on_the_run_the_message_and_the_admin(
    cast: Cast, crew_script: CrewScript, plan: list[str]
) -> None:
    model = priced_model()
    services.credit_add(user=cast.alice, amount=Decimal("10"), note="top-up")
    post(cast.thread, cast.bob, "The launch was discussed on Monday.")
    file_id = _sales(cast)
    crew_script.replies = {
        "planner": ["SPECIALISTS: " + ", ".join(plan)],
        "researcher": [
            tool_call("search_messages", query="launch"),
            final("Monday."),
        ],
        "analyst": [
            tool_call("make_chart", file="sales.csv", group_by="region", value="amount"),
            tool_call("make_table", file="sales.csv", group_by="region", value="amount"),
            final("North 17.5."),
        ],
        "writer": [final("Launch on Monday; North leads.")],
    }
    question = "Chart the data"
    if "researcher" in plan:
        question = "Where was the launch discussed, and chart the data"
    response = ask_crew(cast, question, [file_id], modelId=model.pk)
    run = AgentRun.objects.get(pk=response.json()["reply"]["runId"])
    assert run.status == AgentRun.Status.COMPLETE, run.error
    agents = run.usage["agents"]
    assert set(agents) == {"planner", "writer", *plan}
    expected_calls = {"planner": 1, "researcher": 2, "analyst": 3, "writer": 1}
    assert {name: entry["calls"] for name, entry in agents.items()} == {
        name: calls for name, calls in expected_calls.items() if name in agents
    }
    assert sum(e["promptTokens"] for e in agents.values()) == run.prompt_tokens
    assert sum(e["completionTokens"] for e in agents.values()) == run.completion_tokens
    shares = sum(Decimal(e["cost"]) for e in agents.values())
    assert abs(shares - run.cost) <= Decimal("0.000001") * len(agents)
    tools = run.usage["tools"]
    expected_tools = {"make_chart": 1, "make_table": 1}
    if "researcher" in plan:
        expected_tools["search_messages"] = 1
    assert {name: entry["calls"] for name, entry in tools.items()} == expected_tools
    assert all(entry["ms"] >= 0 for entry in tools.values())
    usage = run.message.meta["usage"]
    assert usage["agents"] == agents and usage["tools"] == tools
    assert (usage["promptTokens"], usage["completionTokens"], usage["cost"]) == (
        run.prompt_tokens,
        run.completion_tokens,
        str(run.cost),
    )
    # The API shows the same usage on the message.
    listed = cast.client(cast.bob).get(f"/api/v1/threads/{cast.thread.pk}/messages/").json()
    shown = next(m for m in _messages(listed) if m["id"] == run.message_id)
    assert shown["meta"]["usage"]["agents"] == agents

    admin = Client()
    admin.force_login(cast.admin)
    page = admin.get(f"/admin/agents/agentrun/{quote(run.pk)}/change/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "make_chart" in body and "analyst" in body
    artifact = Artifact.objects.filter(run=run, kind="chart").get()
    page = admin.get(f"/admin/agents/artifact/{quote(artifact.pk)}/change/")
    assert page.status_code == 200
    assert artifact.title in page.content.decode()
    for url in ("/admin/agents/artifact/", "/admin/agents/agentrun/", "/admin/agents/crewslot/"):
        assert admin.get(url).status_code == 200, url
    # Not for anyone else.
    member = Client()
    member.force_login(cast.bob)
    assert member.get(f"/admin/agents/agentrun/{quote(run.pk)}/change/").status_code == 302


def _messages(body: Any) -> list[dict[str, Any]]:
    if isinstance(body, list):
        return body
    for key in ("messages", "results", "items"):
        if key in body:
            return list(body[key])
    raise AssertionError(f"no message list in {list(body)}")


# --- which mode answers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deployment", "model_mode", "thread_mode", "tools", "expected"),
    [
        ("auto", "", "", False, "core"),  # the bundled small model stays fast
        ("auto", "", "", True, "crew"),
        ("crew", "", "", False, "crew"),
        ("core", "", "", True, "core"),
        ("core", "crew", "", False, "crew"),  # the model overrides the deployment
        ("crew", "core", "", True, "core"),
        ("crew", "auto", "", False, "core"),
        ("core", "auto", "", True, "crew"),
        ("core", "crew", "core", True, "core"),  # the thread overrides the model
        ("core", "core", "crew", False, "crew"),
        ("crew", "crew", "auto", False, "core"),
        ("core", "core", "auto", True, "crew"),
    ],
)
def test_agent_mode_resolution(
    deployment: str, model_mode: str, thread_mode: str, tools: bool, expected: str
) -> None:
    thread = Thread(agent_mode=thread_mode)
    model = AIModel(agent_mode=model_mode, supports_tools=tools)
    with override_settings(AGENT_MODE=deployment):
        assert services.agent_mode_for(thread=thread, model=model) == expected


def test_the_bundled_model_answers_on_the_single_model_path_by_default(
    cast: Cast, scripted_llm: Any
) -> None:
    assert settings.AGENT_MODE == AgentMode.AUTO
    bundled = AIModel.objects.get(pk="mdl_smollm2")
    assert bundled.supports_tools is False
    response = cast.client(cast.alice).post(
        f"/api/v1/threads/{cast.thread.pk}/messages/",
        {"text": "hi", "reply": True},
        format="json",
    )
    run = AgentRun.objects.get(pk=response.json()["reply"]["runId"])
    assert run.mode == "core" and run.message.meta["mode"] == "core"
    assert run.status == AgentRun.Status.COMPLETE


def test_a_threads_mode_picks_the_crew_for_the_bundled_model(
    cast: Cast, crew_script: CrewScript
) -> None:
    Thread.objects.filter(pk=cast.thread.pk).update(agent_mode="crew")
    crew_script.replies = {"planner": ["SPECIALISTS: researcher"], "writer": [final("Crewed.")]}
    response = cast.client(cast.alice).post(
        f"/api/v1/threads/{cast.thread.pk}/messages/",
        {"text": "hi", "reply": True},
        format="json",
    )
    run = AgentRun.objects.get(pk=response.json()["reply"]["runId"])
    assert run.mode == "crew" and run.message.meta["mode"] == "crew"
    assert run.status == AgentRun.Status.COMPLETE, run.error
    assert run.message.text.startswith("Crewed.")
    assert ThreadEvent.objects.filter(thread=cast.thread, type="chatAgentStep").exists()


class _SilentAfterFirstWord(ScriptedCrewLLM):
    """The scripted crew model (a test double) whose writer says one word and then hangs until
    its stream is cut through `completion.abort`, like a stalled server."""

    cuts: ClassVar[list[threading.Event]] = []

    def _generate(self, chat: Any, completion: Any) -> Any:
        if self.agent_name != "writer":
            return super()._generate(chat, completion)
        cut = threading.Event()
        type(self).cuts.append(cut)
        completion.abort = cut.set
        script = type(self).script

        def pieces() -> Any:
            yield "Partial"
            if script.before_call is not None:
                script.before_call("writer-stalled")
            if not cut.wait(30):
                yield " (never cut)"
            raise LLMError("The AI service's answer broke off.")

        return pieces()


def test_stop_cuts_a_crew_model_that_went_silent(
    cast: Cast, crew_script: CrewScript, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agents.crew.ProviderLLM", _SilentAfterFirstWord)
    monkeypatch.setattr(_SilentAfterFirstWord, "cuts", [])
    crew_script.replies = {"planner": ["SPECIALISTS: researcher"], "researcher": [final("ok")]}

    def press_stop(agent: str) -> None:
        if agent == "writer-stalled":
            run = AgentRun.objects.select_related("message").get(mode="crew")
            services.run_stop(message=run.message, actor=cast.alice)

    crew_script.before_call = press_stop
    response = ask_crew(cast, "What did we say?")
    assert response.status_code == 201, response.content
    run = AgentRun.objects.get(pk=response.json()["reply"]["runId"])
    assert run.status == AgentRun.Status.CANCELLED
    # Cut by the worker when it saw the stop, not released by the double's own 30 s wait.
    assert [cut.is_set() for cut in _SilentAfterFirstWord.cuts] == [True]
    assert "never cut" not in run.message.text
