"""A worker's start on a fresh run: one look at the run, the model asked while the worker
claims the run (for a provider whose model runs elsewhere, so the claim overlaps the model
reading the prompt), and a claim that is one conditional update. The reply is the same as
without any of it. Eager Celery tasks and real commits, as in test_reply_flow."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from agents import context, services
from agents.llm import LLMError
from agents.models import AgentRun
from messaging.models import Message
from tests.agents.scripted_llm import wait_until_closed
from tests.helpers import upload

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def claims(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Each claim, with whether the model had been asked when it began (waiting a moment for
    the early call's thread, which asks as soon as it runs)."""
    seen: list[dict[str, Any]] = []

    def watched(original: Any) -> Any:
        def claim(run: Any) -> Any:
            provider: Any = services.get_provider(None)  # type: ignore[arg-type]
            asked = getattr(provider, "asked", None)
            asked_first = asked.wait(5) if asked is not None else bool(provider.calls)
            seen.append({"asked_first": asked_first})
            return original(run)

        return claim

    # A fresh run is taken by `_claim_untouched`; any other by `_claim`.
    monkeypatch.setattr(services, "_claim", watched(services._claim))
    monkeypatch.setattr(services, "_claim_untouched", watched(services._claim_untouched))
    return seen


def _ask(cast, text: str = "What is 2+2?") -> Any:
    response = cast.client(cast.alice).post(
        f"/api/v1/threads/{cast.thread.pk}/messages/",
        {"text": text, "reply": True},
        format="json",
    )
    assert response.status_code == 201, response.content
    return response.json()["reply"]


def test_a_remote_model_is_asked_before_the_claim_and_the_reply_is_whole(
    cast, remote_llm, claims, published
):
    reply = _ask(cast)
    assert claims == [{"asked_first": True}]
    assert remote_llm.asked_in == ["early-model-call"]
    ai = Message.objects.get(pk=reply["messageId"])
    assert ai.status == Message.Status.COMPLETE and ai.text == "Hello, world."
    run = AgentRun.objects.get(pk=reply["runId"])
    assert run.attempts == 1 and run.completion_tokens == 4
    assert remote_llm.calls[0][-1] == {"role": "user", "content": "alice: What is 2+2?"}

    mine = [
        e
        for e in published
        if ai.pk in (e["data"].get("id"), e["data"].get("messageId"))
        or e["data"].get("message", {}).get("id") == ai.pk
    ]
    kinds = [e["type"] for e in mine]
    # No text before the run is claimed and shown as streaming.
    assert kinds[:2] == ["chatMessageAdded", "chatMessageUpdated"]
    assert mine[1]["data"]["status"] == "streaming"
    assert kinds[-1] == "chatMessageCompleted"
    rebuilt = ""
    for event in mine:
        if event["type"] == "chatMessageDelta":
            assert event["data"]["offset"] == len(rebuilt)
            rebuilt += event["data"]["text"]
    assert rebuilt == "Hello, world."


def test_an_in_process_model_is_asked_only_after_the_claim(cast, scripted_llm, claims):
    reply = _ask(cast)
    assert claims == [{"asked_first": False}]
    assert Message.objects.get(pk=reply["messageId"]).text == "Hello, world."


def test_a_run_stopped_before_its_worker_started_never_asks_the_model(
    cast, remote_llm, monkeypatch
):
    queued: list[str] = []
    monkeypatch.setattr(services, "_enqueue", lambda run_id, **options: queued.append(run_id))
    reply = _ask(cast)
    ai = Message.objects.get(pk=reply["messageId"])
    services.run_stop(message=ai, actor=cast.alice)
    services.run_execute(run_id=queued[0])
    assert remote_llm.calls == [] and not remote_llm.asked.is_set()
    assert AgentRun.objects.get(pk=reply["runId"]).status == AgentRun.Status.CANCELLED


def test_a_run_already_tried_is_claimed_before_the_model_is_asked(cast, remote_llm, monkeypatch):
    queued: list[str] = []
    monkeypatch.setattr(services, "_enqueue", lambda run_id, **options: queued.append(run_id))
    reply = _ask(cast)
    # The reaper puts a run whose worker vanished back in the queue with its attempt counted.
    AgentRun.objects.filter(pk=reply["runId"]).update(attempts=1)
    claimed_with_model_asked: list[bool] = []
    original = services._claim

    def claim(run_id: str) -> Any:
        claimed_with_model_asked.append(remote_llm.asked.is_set())
        return original(run_id)

    monkeypatch.setattr(services, "_claim", claim)
    services.run_execute(run_id=queued[0])
    assert claimed_with_model_asked == [False]
    assert remote_llm.asked_in == ["MainThread"]
    assert Message.objects.get(pk=reply["messageId"]).text == "Hello, world."


def test_a_lost_claim_cuts_the_early_call_and_sends_nothing(
    cast, remote_llm, monkeypatch, published
):
    queued: list[str] = []
    monkeypatch.setattr(services, "_enqueue", lambda run_id, **options: queued.append(run_id))
    reply = _ask(cast)
    # Another delivery of the same task took the run between our look and our claim.
    monkeypatch.setattr(services, "_claim_untouched", lambda run: None)
    monkeypatch.setattr(services, "_claim", lambda run_id: None)
    published.clear()
    services.run_execute(run_id=queued[0])
    assert remote_llm.asked.is_set()
    assert remote_llm.aborted.is_set()
    # Closed by whichever thread finishes last: the worker does not wait for the model.
    wait_until_closed(remote_llm)
    assert remote_llm.closed
    assert [e for e in published if e["type"] == "chatMessageDelta"] == []
    ai = Message.objects.get(pk=reply["messageId"])
    assert ai.status == Message.Status.QUEUED and ai.text == ""


def test_an_early_call_refused_before_any_text_is_retried_and_completes(cast, remote_llm):
    remote_llm.failure = LLMError("The AI service cannot be reached.", retryable=True)
    original = remote_llm.stream

    def fails_once(**kwargs: Any) -> Any:
        try:
            return original(**kwargs)
        finally:
            remote_llm.failure = None  # only the first call fails

    remote_llm.stream = fails_once
    reply = _ask(cast)
    ai = Message.objects.get(pk=reply["messageId"])
    assert ai.status == Message.Status.COMPLETE and ai.text == "Hello, world."
    assert len(remote_llm.calls) == 2


def test_an_early_call_that_breaks_off_fails_the_reply_with_its_reason(cast, remote_llm):
    remote_llm.failure = LLMError("The AI service's answer broke off.")
    remote_llm.fail_after = 2
    reply = _ask(cast)
    ai = Message.objects.get(pk=reply["messageId"])
    assert ai.status == Message.Status.FAILED and ai.text == "Hello, "
    assert ai.meta["error"] == "The AI service's answer broke off."


def _queued(cast, monkeypatch, **extra: Any) -> dict[str, Any]:
    monkeypatch.setattr(services, "_enqueue", lambda run_id, **options: None)
    response = cast.client(cast.alice).post(
        f"/api/v1/threads/{cast.thread.pk}/messages/",
        {"text": "What is in it?", "reply": True, **extra},
        format="json",
    )
    assert response.status_code == 201, response.content
    return response.json()["reply"]


def test_the_files_of_the_question_are_read_when_it_has_some(cast, monkeypatch):
    uploaded = upload(
        cast.client(cast.alice), "notes.txt", b"The otters sleep at noon.", "text/plain"
    )
    reply = _queued(cast, monkeypatch, fileIds=[uploaded.json()["id"]])
    run = services._run_untouched(reply["runId"])
    assert run is not None
    messages = context.build(run=run, count_tokens=lambda text: len(text.split()))
    assert "[notes.txt]\nThe otters sleep at noon." in messages[0]["content"]


def test_a_run_stopped_after_the_first_look_is_not_taken_by_the_quick_claim(
    cast, remote_llm, monkeypatch
):
    reply = _queued(cast, monkeypatch)
    run = services._run_untouched(reply["runId"])
    assert run is not None
    services.run_stop(message=Message.objects.get(pk=reply["messageId"]), actor=cast.alice)
    assert services._claim_untouched(run) is None
    # The full claim then finishes it as stopped, and the model is never read.
    assert services._claim(reply["runId"]) is None
    assert AgentRun.objects.get(pk=reply["runId"]).status == AgentRun.Status.CANCELLED
    assert remote_llm.calls == []


def test_only_one_of_two_deliveries_takes_a_fresh_run(cast, monkeypatch):
    reply = _queued(cast, monkeypatch)
    first = services._run_untouched(reply["runId"])
    second = services._run_untouched(reply["runId"])
    assert first is not None and second is not None
    assert services._claim_untouched(first) is not None
    assert services._claim_untouched(second) is None
    run = AgentRun.objects.get(pk=reply["runId"])
    assert run.status == AgentRun.Status.RUNNING and run.attempts == 1
    assert Message.objects.get(pk=reply["messageId"]).status == Message.Status.STREAMING


def test_a_lost_claim_does_not_wait_for_a_model_that_has_not_answered(
    cast, remote_llm, monkeypatch
):
    queued: list[str] = []
    monkeypatch.setattr(services, "_enqueue", lambda run_id, **options: queued.append(run_id))
    _ask(cast)
    # A model that ignores being cut until it answers (a server still reading the prompt).
    release = threading.Event()
    remote_llm.before_piece = lambda index: release.wait(30) if index == 0 else None
    monkeypatch.setattr(services, "_claim_untouched", lambda run: None)
    monkeypatch.setattr(services, "_claim", lambda run_id: None)

    worker = threading.Thread(target=services.run_execute, kwargs={"run_id": queued[0]})
    worker.start()
    worker.join(10)
    finished_before_the_model_answered = not worker.is_alive()
    release.set()
    worker.join(10)
    assert finished_before_the_model_answered
    wait_until_closed(remote_llm)
    assert remote_llm.closed  # closed by the call's own thread once the model answered


def test_a_claim_that_fails_cuts_the_early_call(cast, remote_llm, monkeypatch):
    queued: list[str] = []
    monkeypatch.setattr(services, "_enqueue", lambda run_id, **options: queued.append(run_id))
    _ask(cast)

    def database_gone(run: Any) -> Any:
        raise ConnectionError("the database went away")

    monkeypatch.setattr(services, "_claim_untouched", database_gone)
    with pytest.raises(ConnectionError):
        services.run_execute(run_id=queued[0])
    assert remote_llm.aborted.is_set()
    wait_until_closed(remote_llm)
    assert remote_llm.closed
