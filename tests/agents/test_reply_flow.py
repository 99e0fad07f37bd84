"""The single-model reply path end to end, with the scripted test LLM and eager Celery tasks."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from agents import services
from agents.llm import LLMError
from agents.models import Account, AgentRun, AIModel, LedgerEntry, ModelGrant
from messaging.models import Message
from tests.agents.scripted_llm import ScriptedProvider

# Real commits (transaction=True): the eager task runs at the request's commit and each of its
# own transactions publishes at its commit, in the order a real worker does.
pytestmark = pytest.mark.django_db(transaction=True)


def _ask(cast, user=None, text="What is 2+2?", **extra):
    client = cast.client(user or cast.alice)
    return client.post(
        f"/api/v1/threads/{cast.thread.pk}/messages/",
        {"text": text, "reply": True, **extra},
        format="json",
    )


def _priced_model(**fields) -> AIModel:
    defaults = {
        "name": "Priced",
        "provider": "local",
        "context_window": 1000,
        "max_output_tokens": 100,
        "price_input_per_1k": Decimal("1.000000"),
        "price_output_per_1k": Decimal("2.000000"),
        "available_to_all": True,
    }
    return AIModel.objects.create(**(defaults | fields))


def test_a_reply_streams_and_completes(cast, scripted_llm, published):
    response = _ask(cast)
    assert response.status_code == 201, response.content
    reply = response.json()["reply"]
    ai = Message.objects.get(pk=reply["messageId"])
    assert ai.author_id is None
    assert ai.text == "Hello, world."
    assert ai.status == Message.Status.COMPLETE
    assert ai.meta["modelId"] == "mdl_smollm2" and ai.meta["platformId"] == "local"
    run = AgentRun.objects.get(pk=reply["runId"])
    assert run.status == AgentRun.Status.COMPLETE and run.attempts == 1
    assert run.completion_tokens == 4

    kinds = [
        e["type"]
        for e in published
        if e["data"].get("id") == ai.pk
        or e["data"].get("messageId") == ai.pk
        or e["data"].get("message", {}).get("id") == ai.pk
    ]
    assert kinds[0] == "chatMessageAdded"
    assert kinds[1] == "chatMessageUpdated"  # queued → streaming
    assert kinds[-1] == "chatMessageCompleted"
    deltas = [e["data"] for e in published if e["type"] == "chatMessageDelta"]
    # Offsets chain: each delta starts where the previous one ended, covering the whole text.
    rebuilt = ""
    for delta in deltas:
        assert delta["offset"] == len(rebuilt)
        rebuilt += delta["text"]
    assert rebuilt == "Hello, world."
    completed = published[-1]
    assert completed["data"]["message"]["text"] == "Hello, world."
    assert completed["data"]["usage"]["completionTokens"] == 4


def test_the_question_and_history_reach_the_model(cast, scripted_llm):
    cast.thread.session_prompt = "Answer like a pirate."
    cast.thread.save()
    _ask(cast, text="Where is the treasure?")
    messages = scripted_llm.calls[0]
    assert messages[0]["role"] == "system" and "pirate" in messages[0]["content"]
    assert messages[-1] == {"role": "user", "content": "alice: Where is the treasure?"}


def test_cost_is_exact_and_settled_once(cast, scripted_llm):
    model = _priced_model()
    services.credit_add(user=cast.alice, amount=Decimal("10"), note="top-up")
    response = _ask(cast, modelId=model.pk)
    run = AgentRun.objects.get(pk=response.json()["reply"]["runId"])
    expected = (Decimal(run.prompt_tokens) * 1 + Decimal(run.completion_tokens) * 2) / 1000
    assert run.cost == expected.quantize(Decimal("0.000001"))
    account = Account.objects.get(user=cast.alice)
    assert account.balance == Decimal("1.00") + Decimal("10") - run.cost
    total = sum(e.amount for e in LedgerEntry.objects.filter(account=account))
    assert total == account.balance

    # Running the same run again (a redelivered task) changes nothing.
    services.run_execute(run_id=run.pk)
    assert Account.objects.get(user=cast.alice).balance == account.balance
    assert LedgerEntry.objects.filter(run=run).count() == 2


def test_a_model_the_user_may_not_use_is_refused_before_anything_is_stored(cast, scripted_llm):
    secret = _priced_model(name="Secret", available_to_all=False)
    before = Message.objects.count()
    response = _ask(cast, modelId=secret.pk)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert Message.objects.count() == before
    assert scripted_llm.calls == []

    ModelGrant.objects.create(model=secret, user=cast.alice)
    services.credit_add(user=cast.alice, amount=Decimal("5"), note="enough for Secret")
    assert _ask(cast, modelId=secret.pk).status_code == 201


def test_a_balance_at_zero_is_refused_and_nothing_is_stored(cast, scripted_llm):
    services.credit_add(user=cast.alice, amount=Decimal("-1.00"), note="spent")
    before = Message.objects.count()
    response = _ask(cast)
    assert response.status_code == 403
    assert "balance" in response.json()["error"]["message"]
    assert Message.objects.count() == before
    assert scripted_llm.calls == []


def test_a_broken_stream_fails_with_a_reason_and_keeps_the_text(cast, scripted_llm):
    scripted_llm.failure = LLMError("The AI service's answer broke off.")
    scripted_llm.fail_after = 2
    response = _ask(cast)
    ai = Message.objects.get(pk=response.json()["reply"]["messageId"])
    assert ai.status == Message.Status.FAILED
    assert ai.text == "Hello, "
    assert ai.meta["error"] == "The AI service's answer broke off."
    assert ai.run.completion_tokens == 2


def test_a_retryable_refusal_is_retried_once_before_any_text(cast, scripted_llm):
    failures = iter([LLMError("down", retryable=True)])
    original = scripted_llm.stream

    def flaky(**kwargs):
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return original(**kwargs)

    scripted_llm.stream = flaky
    response = _ask(cast)
    ai = Message.objects.get(pk=response.json()["reply"]["messageId"])
    assert ai.status == Message.Status.COMPLETE and ai.text == "Hello, world."


@override_settings(STREAM_SAVE_MS=0)
def test_stop_mid_stream_keeps_the_partial_text_and_charges_only_what_was_produced(
    cast, scripted_llm
):
    model = _priced_model()
    services.credit_add(user=cast.alice, amount=Decimal("5"), note="enough for Priced")
    holder: dict[str, Message] = {}

    def press_stop(index: int) -> None:
        if index == 2:
            services.run_stop(message=holder["ai"], actor=cast.alice)
            time.sleep(0.3)  # the model takes a moment over its next piece; the worker notices

    scripted_llm.before_piece = press_stop
    original = services.run_execute

    def capture(*, run_id: str, **options: Any) -> None:
        holder["ai"] = AgentRun.objects.get(pk=run_id).message
        original(run_id=run_id, **options)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(services, "run_execute", capture)
        response = _ask(cast, modelId=model.pk)
    ai = Message.objects.get(pk=response.json()["reply"]["messageId"])
    # Stop was pressed while the third piece was being produced: it is kept, the fourth is not.
    assert ai.status == Message.Status.CANCELLED
    assert ai.text == "Hello, world"
    assert scripted_llm.closed  # the model was told to stop
    run = ai.run
    assert run.completion_tokens == 3
    assert run.cost == ((Decimal(run.prompt_tokens) + 3 * 2) / 1000).quantize(Decimal("0.000001"))


def test_stop_is_for_the_asker_the_owner_or_an_admin(cast, scripted_llm, queued):
    # Leave the run queued (the `queued` fixture).
    response = _ask(cast, user=cast.bob)
    ai_id = response.json()["reply"]["messageId"]
    missing = cast.client(cast.charlie).post("/api/v1/messages/msg_nope/stop/")
    outsider = cast.client(cast.charlie).post(f"/api/v1/messages/{ai_id}/stop/")
    assert outsider.status_code == missing.status_code == 404
    assert outsider.content == missing.content

    # bob asked; alice owns the thread, so she may stop it too.
    stopped = cast.client(cast.alice).post(f"/api/v1/messages/{ai_id}/stop/")
    assert stopped.status_code == 200
    assert stopped.json()["status"] == "cancelled"
    # A queued run cancelled before it started costs nothing.
    assert AgentRun.objects.get(message_id=ai_id).cost == 0


def test_regenerate_answers_the_same_question_again(cast, scripted_llm):
    first = _ask(cast, text="Tell me a joke").json()["reply"]["messageId"]
    scripted_llm.pieces = ["Another", " one"]
    response = cast.client(cast.alice).post(f"/api/v1/messages/{first}/regenerate/")
    assert response.status_code == 201
    second = Message.objects.get(pk=response.json()["id"])
    assert second.pk != first and second.text == "Another one"
    assert scripted_llm.calls[1][-1]["content"].endswith("Tell me a joke")


def test_a_run_whose_worker_vanished_is_run_again_once_then_failed(cast, scripted_llm, monkeypatch):
    from agents.tasks import run_agent

    monkeypatch.setattr(run_agent, "apply_async", lambda **kwargs: None)
    response = _ask(cast)
    run = AgentRun.objects.get(pk=response.json()["reply"]["runId"])
    stale = timezone.now() - timedelta(minutes=5)
    AgentRun.objects.filter(pk=run.pk).update(status="running", attempts=1, heartbeat_at=stale)
    monkeypatch.undo()
    monkeypatch.setattr("agents.llm.get_provider", lambda model: scripted_llm)
    assert services.runs_reap_stale() == 1
    run.refresh_from_db()
    assert run.status == AgentRun.Status.COMPLETE and run.attempts == 2

    AgentRun.objects.filter(pk=run.pk).update(status="running", attempts=2, heartbeat_at=stale)
    assert services.runs_reap_stale() == 1
    run.refresh_from_db()
    assert run.status == AgentRun.Status.FAILED
    assert "stopped" in run.message.meta["error"]


def test_models_and_balance_are_listed(cast):
    _priced_model(name="Hidden", available_to_all=False)
    models = cast.client(cast.bob).get("/api/v1/models/").json()["models"]
    assert [m["name"] for m in models] == ["SmolLM2 135M (bundled)"]
    me = cast.client(cast.bob).get("/api/v1/me/").json()
    assert me["usage"]["replies"] == 0
    assert me["balance"] is None  # no account until the first reply


def test_concurrent_replies_never_overdraw(cast, queued):
    if connection.vendor != "postgresql":
        pytest.skip("row locks under real concurrency need PostgreSQL")
    model = _priced_model()  # the most a reply can cost: 0.9 + 0.2 = 1.1
    services.credit_add(user=cast.alice, amount=Decimal("10.00"), note="covers 10")
    outcomes: list[str] = []

    def ask() -> None:
        try:
            with transaction.atomic():
                services.reply_request(
                    thread=cast.thread, requester=cast.alice, request_message=None, model=model
                )
            outcomes.append("ok")
        except Exception as exc:  # the refusals are what we count
            outcomes.append(type(exc).__name__)
        finally:
            connection.close()

    threads = [threading.Thread(target=ask) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    account = Account.objects.get(user=cast.alice)
    assert outcomes.count("ok") == 10
    assert account.balance >= 0
    assert account.balance == sum(e.amount for e in account.entries.all())


def test_the_scripted_provider_is_only_a_test_double():
    # The runtime default provider for the bundled model is the real local one.
    from agents.llm import get_provider
    from agents.llm.local import LocalProvider

    model = AIModel.objects.get(pk="mdl_smollm2")
    assert isinstance(get_provider(model), LocalProvider)
    assert not isinstance(get_provider(model), ScriptedProvider)


def test_an_untitled_thread_gets_a_title_after_its_first_exchange(cast, scripted_llm):
    from messaging.services import thread_create

    thread, _ = thread_create(creator=cast.alice)
    assert thread.title == "New chat"
    cast.client(cast.alice).post(
        f"/api/v1/threads/{thread.pk}/messages/",
        {"text": "Plan a trip", "reply": True},
        format="json",
    )
    thread.refresh_from_db()
    assert thread.title == "Hello, world"  # what the model suggested, cleaned
    # The title call saw the exchange.
    assert "Plan a trip" in scripted_llm.calls[-1][-1]["content"]


@override_settings(MAX_CHAT_HISTORY_CONTEXT=2)
def test_older_turns_are_folded_into_a_summary_the_model_then_reads(
    cast, scripted_llm, monkeypatch
):
    from agents import housekeeping
    from messaging.services import message_post

    monkeypatch.setattr(housekeeping, "SUMMARY_TRIGGER_TOKENS", 1)
    for text in ["We chose Lisbon.", "Budget is 900 euros.", "Leaving on May 3rd."]:
        message_post(thread=cast.thread, author=cast.bob, text=text)
    _ask(cast, text="Remind me of the plan")
    summary = cast.client(cast.bob).get(f"/api/v1/threads/{cast.thread.pk}/summary/").json()
    assert summary["text"] == "Hello, world."
    assert summary["uptoSeq"] >= 1
    summarised = scripted_llm.calls[-1][-1]["content"]
    assert "We chose Lisbon." in summarised and "Remind me of the plan" not in summarised

    _ask(cast, text="And the budget?")
    system = scripted_llm.calls[-2][0]["content"]  # the reply's call (upkeep calls come after)
    assert "Summary of the earlier conversation:\nHello, world." in system

    outsider = cast.client(cast.charlie).get(f"/api/v1/threads/{cast.thread.pk}/summary/")
    assert outsider.status_code == 404


class _StallingProvider:
    """A TEST DOUBLE model that writes one word and then goes silent until its stream is cut
    (`completion.abort`), as a hung OpenAI-compatible server would."""

    def __init__(self, on_stall):
        self.on_stall = on_stall
        self.cut = threading.Event()

    def count_tokens(self, text):
        return max(1, len(text.split()))

    def stream(self, *, messages, max_tokens, completion):
        completion.abort = self.cut.set

        def pieces():
            yield "Hello"
            self.on_stall()
            if not self.cut.wait(30):
                yield " (never cut)"
            raise LLMError("The AI service's answer broke off.")

        return pieces()


def test_stop_cuts_a_model_that_went_silent(cast, monkeypatch):
    def press_stop():
        # The model is asked only after the claim: the run being written is the one running.
        message = AgentRun.objects.get(status=AgentRun.Status.RUNNING).message
        services.run_stop(message=message, actor=cast.alice)

    provider = _StallingProvider(press_stop)
    monkeypatch.setattr("agents.llm.get_provider", lambda model: provider)
    response = _ask(cast)
    assert response.status_code == 201, response.content
    run = AgentRun.objects.get(pk=response.json()["reply"]["runId"])
    assert provider.cut.is_set()
    assert run.status == AgentRun.Status.CANCELLED
    # Cut by the pacer when it saw the stop, not released by the double's own 30 s wait.
    assert run.message.text == "Hello"
