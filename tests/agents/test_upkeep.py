"""The side calls after a reply (agents.housekeeping): budgeted by the model's context window,
not retried on every reply after a failure, switchable, and their usage recorded on the run.
With the scripted test LLM (whose tokens are words)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from django.test import override_settings

from agents import housekeeping
from agents.llm import ChatMessages, Completion, LLMError
from agents.models import AgentRun, AIModel, LedgerEntry, ThreadSummary
from messaging.services import message_post, thread_create
from tests.agents.scripted_llm import ScriptedProvider
from tests.conftest import Cast

pytestmark = pytest.mark.django_db(transaction=True)

WINDOW = 300


def _ask(cast: Cast, thread_id: str, text: str = "What is 2+2?") -> AgentRun:
    response = cast.client(cast.alice).post(
        f"/api/v1/threads/{thread_id}/messages/", {"text": text, "reply": True}, format="json"
    )
    assert response.status_code == 201, response.content
    return AgentRun.objects.get(pk=response.json()["reply"]["runId"])


def _calls(provider: ScriptedProvider, system: str) -> list[ChatMessages]:
    return [call for call in provider.calls if call[0]["content"] == system]


@pytest.fixture
def small_model() -> AIModel:
    """The default model, with a context window a long history overflows."""
    model = AIModel.objects.get(is_default=True)
    model.context_window, model.max_output_tokens = WINDOW, 20
    model.price_input_per_1k, model.price_output_per_1k = Decimal("1"), Decimal("2")
    model.save()
    return model


@override_settings(MAX_CHAT_HISTORY_CONTEXT=2)
def test_the_summary_fits_the_window_and_folds_the_rest_on_later_replies(
    cast: Cast, scripted_llm: ScriptedProvider, small_model: AIModel, monkeypatch: Any
) -> None:
    monkeypatch.setattr(housekeeping, "SUMMARY_TRIGGER_TOKENS", 1)
    for n in range(12):  # 12 turns of 40 words: far more than a 300-token window holds
        message_post(thread=cast.thread, author=cast.bob, text=f"turn{n} " + "word " * 39)
    _ask(cast, cast.thread.pk)
    first = _calls(scripted_llm, housekeeping.SUMMARY_PROMPT)
    assert len(first) == 1
    sent = sum(scripted_llm.count_tokens(m["content"]) for m in first[0])
    assert sent + housekeeping.SUMMARY_MAX_TOKENS <= WINDOW
    summary = ThreadSummary.objects.get(thread=cast.thread)
    assert "turn0 " in first[0][1]["content"] and "turn11 " not in first[0][1]["content"]
    folded = summary.upto_seq

    _ask(cast, cast.thread.pk, "And then?")
    second = _calls(scripted_llm, housekeeping.SUMMARY_PROMPT)[1]
    assert second[1]["content"].startswith("Summary so far: ")
    assert sum(scripted_llm.count_tokens(m["content"]) for m in second) <= WINDOW
    summary.refresh_from_db()
    assert summary.upto_seq > folded  # the next turns, not the same ones again


class FailingUpkeepProvider(ScriptedProvider):
    """A TEST DOUBLE model that answers replies but refuses every title and summary call, as
    a model without room or without the skill would."""

    def stream(
        self, *, messages: ChatMessages, max_tokens: int, completion: Completion
    ) -> Iterator[str]:
        if messages[0]["content"] in (housekeeping.TITLE_PROMPT, housekeeping.SUMMARY_PROMPT):
            self.calls.append(messages)
            raise LLMError("Requested tokens exceed context window", retryable=False)
        return super().stream(messages=messages, max_tokens=max_tokens, completion=completion)


def test_a_failed_title_call_is_not_tried_again_on_every_reply(
    cast: Cast, monkeypatch: Any
) -> None:
    provider = FailingUpkeepProvider()
    monkeypatch.setattr("agents.llm.get_provider", lambda model: provider)
    thread, _ = thread_create(creator=cast.alice)
    for n in range(3):
        run = _ask(cast, thread.pk, f"question {n}")
        assert AgentRun.objects.get(pk=run.pk).status == AgentRun.Status.COMPLETE
    assert len(_calls(provider, housekeeping.TITLE_PROMPT)) == 1
    thread.refresh_from_db()
    assert thread.title == housekeeping.DEFAULT_TITLE


@override_settings(TITLE_GENERATION=False)
def test_title_generation_can_be_turned_off(cast: Cast, scripted_llm: ScriptedProvider) -> None:
    thread, _ = thread_create(creator=cast.alice)
    _ask(cast, thread.pk)
    assert _calls(scripted_llm, housekeeping.TITLE_PROMPT) == []
    thread.refresh_from_db()
    assert thread.title == housekeeping.DEFAULT_TITLE
    assert len(scripted_llm.calls) == 1  # the reply, and nothing else


@override_settings(MAX_CHAT_HISTORY_CONTEXT=2, SUMMARY_GENERATION=False)
def test_summary_generation_can_be_turned_off(
    cast: Cast, scripted_llm: ScriptedProvider, monkeypatch: Any
) -> None:
    monkeypatch.setattr(housekeeping, "SUMMARY_TRIGGER_TOKENS", 1)
    for n in range(4):
        message_post(thread=cast.thread, author=cast.bob, text=f"turn {n}")
    _ask(cast, cast.thread.pk)
    assert _calls(scripted_llm, housekeeping.SUMMARY_PROMPT) == []
    assert not ThreadSummary.objects.filter(thread=cast.thread).exists()


def test_the_title_calls_usage_is_recorded_on_the_run_and_not_charged(
    cast: Cast, scripted_llm: ScriptedProvider, small_model: AIModel
) -> None:
    thread, _ = thread_create(creator=cast.alice)
    run = _ask(cast, thread.pk)
    run.refresh_from_db()
    title = run.usage["upkeep"]["title"]
    assert title["promptTokens"] > 0 and title["completionTokens"] > 0
    assert Decimal(title["cost"]) > 0 and title["charged"] is False
    settle = LedgerEntry.objects.get(run=run, kind=LedgerEntry.Kind.SETTLE)
    assert run.reserved - settle.amount == run.cost  # the charge is the reply's alone
