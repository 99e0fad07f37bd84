"""A reply queued before its post commits (PostgreSQL, a real broker, a model served elsewhere):
the worker asks the model from what the post sent while the post is still writing, waits for
the post to end before it looks at the run, and the reply is the same as when it was queued
on commit. A post that rolls back leaves nothing, and its model call is cut.

Celery is eager in the tests, which would run the task inside the post; here the publish is
caught and a thread plays the worker, each on its own database connection, with real commits.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from django.conf import settings
from django.db import IntegrityError, connection

from agents import context, services
from agents.models import AgentRun, AIModel, LedgerEntry
from agents.tasks import run_agent
from messaging.models import Message
from messaging.services import message_post
from tests.agents.scripted_llm import RemoteScriptedProvider, wait_until_closed
from tests.helpers import upload

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _postgresql_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the post's commit is waited for with a PostgreSQL advisory lock")


@pytest.fixture
def served_model() -> AIModel:
    return AIModel.objects.create(
        name="Served",
        provider="openai",
        provider_model="served",
        context_window=2000,
        max_output_tokens=50,
        price_input_per_1k=Decimal("0.100000"),
        price_output_per_1k=Decimal("0.200000"),
        available_to_all=True,
    )


@dataclass
class Broker:
    """Catches what the post publishes; `worker` says what happens to it meanwhile."""

    before_commit: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    on_commit: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    # Called with (run_id, inputs) while the post waits in its publish, inside its transaction.
    worker: Any = None

    def join(self) -> None:
        for thread in self.threads:
            thread.join(20)
            assert not thread.is_alive()


def _as_worker(run_id: str, inputs: dict[str, Any]) -> None:
    try:
        services.run_execute(run_id=run_id, before_commit=inputs)
    finally:
        connection.close()  # this thread's own connection


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[Broker]:
    caught = Broker()

    def apply_async(args: tuple[str], kwargs: dict[str, Any], **options: Any) -> None:
        caught.before_commit.append((args[0], kwargs["before_commit"]))
        if caught.worker is not None:
            caught.worker(args[0], kwargs["before_commit"])

    conf = run_agent.app.conf
    eager = conf.task_always_eager
    conf.task_always_eager = False  # Celery's settings object is not monkeypatch's to restore
    monkeypatch.setattr(run_agent, "apply_async", apply_async)
    monkeypatch.setattr(services, "_enqueue", lambda run_id, **o: caught.on_commit.append(run_id))
    try:
        yield caught
        caught.join()
    finally:
        conf.task_always_eager = eager


def _post(cast, model: AIModel, text: str = "What is 2+2?", **extra: Any) -> Any:
    return cast.client(cast.alice).post(
        f"/api/v1/threads/{cast.thread.pk}/messages/",
        {"text": text, "reply": True, "modelId": model.pk, **extra},
        format="json",
    )


def _worker_asks_before_the_post_goes_on(broker: Broker, provider: RemoteScriptedProvider) -> None:
    def worker(run_id: str, inputs: dict[str, Any]) -> None:
        thread = threading.Thread(target=_as_worker, args=(run_id, inputs))
        broker.threads.append(thread)
        thread.start()
        # The post is inside its transaction here: hold it until the model has been asked.
        assert provider.asked.wait(10)

    broker.worker = worker


def test_the_model_is_asked_before_the_post_commits_and_the_reply_is_the_same(
    cast, served_model, remote_llm, broker, published
):
    for number in range(settings.MAX_CHAT_HISTORY_CONTEXT + 4):  # more than the context keeps
        author = cast.bob if number % 2 else cast.alice
        message_post(thread=cast.thread, author=author, text=f"note {number}")
    _worker_asks_before_the_post_goes_on(broker, remote_llm)

    response = _post(cast, served_model)
    assert response.status_code == 201, response.content
    broker.join()
    reply = response.json()["reply"]
    assert [run_id for run_id, _ in broker.before_commit] == [reply["runId"]]
    assert broker.on_commit == []  # queued once, before the commit
    assert remote_llm.asked_in == ["early-model-call"]

    ai = Message.objects.get(pk=reply["messageId"])
    assert ai.status == Message.Status.COMPLETE and ai.text == "Hello, world."
    run = AgentRun.objects.get(pk=reply["runId"])
    assert run.status == AgentRun.Status.COMPLETE and run.attempts == 1
    assert run.completion_tokens == 4
    # What the model was told before the commit is what it is told from the committed rows.
    committed = AgentRun.objects.select_related(
        "model", "thread", "message", "request_message"
    ).get(pk=run.pk)
    assert remote_llm.calls == [context.build(run=committed, count_tokens=remote_llm.count_tokens)]
    assert remote_llm.calls[0][-1] == {"role": "user", "content": "alice: What is 2+2?"}
    assert len(remote_llm.calls[0]) == 1 + settings.MAX_CHAT_HISTORY_CONTEXT  # and the system text

    mine = [
        e
        for e in published
        if ai.pk in (e["data"].get("id"), e["data"].get("messageId"))
        or e["data"].get("message", {}).get("id") == ai.pk
    ]
    kinds = [e["type"] for e in mine]
    assert kinds[:2] == ["chatMessageAdded", "chatMessageUpdated"]  # no text before the claim
    assert kinds[-1] == "chatMessageCompleted"
    assert "".join(e["data"]["text"] for e in mine if e["type"] == "chatMessageDelta") == (
        "Hello, world."
    )
    spent = -sum(e.amount for e in LedgerEntry.objects.filter(run=run))
    assert spent == run.cost > 0  # reserved, then settled to the real tokens


def test_a_post_that_rolls_back_leaves_nothing_and_its_model_call_is_cut(
    cast, served_model, remote_llm, broker, monkeypatch, published
):
    _worker_asks_before_the_post_goes_on(broker, remote_llm)
    # The post fails after it queued the run: its last insert, the reservation's entry, breaks.
    create = LedgerEntry.objects.create

    def breaks_on_the_reservation(**fields: Any) -> Any:
        if fields.get("kind") == LedgerEntry.Kind.RESERVE:
            raise IntegrityError("the database refused the insert")
        return create(**fields)

    monkeypatch.setattr(LedgerEntry.objects, "create", breaks_on_the_reservation)
    with pytest.raises(IntegrityError):
        _post(cast, served_model)
    broker.join()
    assert len(broker.before_commit) == 1
    assert remote_llm.aborted.is_set()
    wait_until_closed(remote_llm)
    assert remote_llm.closed
    assert AgentRun.objects.count() == 0
    assert not Message.objects.filter(text="What is 2+2?").exists()
    assert [e for e in published if e["type"] == "chatMessageDelta"] == []


def test_a_run_stopped_before_its_task_runs_never_asks_the_model(
    cast, served_model, remote_llm, broker
):
    response = _post(cast, served_model)  # no worker yet: the post commits
    assert response.status_code == 201, response.content
    reply = response.json()["reply"]
    services.run_stop(message=Message.objects.get(pk=reply["messageId"]), actor=cast.alice)
    [(run_id, inputs)] = broker.before_commit
    _as_worker(run_id, inputs)
    assert remote_llm.calls == [] and not remote_llm.asked.is_set()
    assert AgentRun.objects.get(pk=run_id).status == AgentRun.Status.CANCELLED


def test_a_task_that_finds_its_post_ended_goes_the_usual_way(
    cast, served_model, remote_llm, broker, monkeypatch
):
    response = _post(cast, served_model)
    reply = response.json()["reply"]
    [(run_id, inputs)] = broker.before_commit
    not_before_commit: list[str] = []
    monkeypatch.setattr(services, "_call_before_commit", lambda *a: not_before_commit.append("x"))
    _as_worker(run_id, inputs)
    assert not_before_commit == []  # a queued or redelivered task: the run is looked at first
    ai = Message.objects.get(pk=reply["messageId"])
    assert ai.status == Message.Status.COMPLETE and ai.text == "Hello, world."
    assert [m["content"] for m in remote_llm.calls[0][1:]] == ["alice: What is 2+2?"]


def test_a_redelivered_task_is_claimed_before_the_model_is_asked(
    cast, served_model, remote_llm, broker, monkeypatch
):
    response = _post(cast, served_model)
    reply = response.json()["reply"]
    [(run_id, inputs)] = broker.before_commit
    # A worker took it and died: the reaper put it back with the attempt counted.
    AgentRun.objects.filter(pk=run_id).update(attempts=1)
    asked_at_claim: list[bool] = []
    original = services._claim

    def claim(run_id: str) -> Any:
        asked_at_claim.append(remote_llm.asked.is_set())
        return original(run_id)

    monkeypatch.setattr(services, "_claim", claim)
    _as_worker(run_id, inputs)
    assert asked_at_claim == [False]
    assert Message.objects.get(pk=reply["messageId"]).text == "Hello, world."


def test_a_question_with_files_is_queued_on_commit(cast, served_model, remote_llm, broker):
    uploaded = upload(cast.client(cast.alice), "notes.txt", b"Otters nap at noon.", "text/plain")
    response = _post(cast, served_model, fileIds=[uploaded.json()["id"]])
    assert response.status_code == 201, response.content
    assert broker.before_commit == []
    assert broker.on_commit == [response.json()["reply"]["runId"]]


def test_the_bundled_model_is_queued_on_commit(cast, scripted_llm, broker):
    response = cast.client(cast.alice).post(
        f"/api/v1/threads/{cast.thread.pk}/messages/",
        {"text": "Hi", "reply": True},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert broker.before_commit == []
    assert broker.on_commit == [response.json()["reply"]["runId"]]


def test_a_broker_that_refuses_before_the_commit_gets_the_run_on_commit(
    cast, served_model, remote_llm, broker, monkeypatch
):
    def refuses(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(run_agent, "apply_async", refuses)
    response = _post(cast, served_model)
    assert response.status_code == 201, response.content
    assert broker.on_commit == [response.json()["reply"]["runId"]]
