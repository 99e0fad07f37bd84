"""The grpc_agent provider against a small real gRPC agent on 127.0.0.1 (AI-at-Work's
AIService.Process), started by the test: what the agent is told, its cost in the ledger, and
the ways a turn fails."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import grpc
import pytest
from channels.testing import WebsocketCommunicator
from django.core.files.uploadedfile import SimpleUploadedFile

from agents.llm.proto import ai_service_pb2, ai_service_pb2_grpc
from agents.models import Account, AgentRun, AIModel, LedgerEntry, LegacyModelNumber, ThreadSummary
from chatproject.asgi import application
from messaging import services as messaging_services
from messaging.models import Message
from tests.conftest import Cast
from tests.helpers import post
from threads import services as thread_services
from threads.models import Thread

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass
class Agent(ai_service_pb2_grpc.AIServiceServicer):
    """A scripted agent: answers `answer` at `cost`, or sleeps, or fails, and keeps what it got."""

    answer: str = "Agent says hi."
    cost: float = 0.25
    delay: float = 0.0
    abort: str | None = None
    requests: list[ai_service_pb2.Request] = field(default_factory=list)

    def Process(self, request: ai_service_pb2.Request, context: Any) -> ai_service_pb2.Response:
        self.requests.append(request)
        if self.delay:
            time.sleep(self.delay)
        if self.abort is not None:
            context.abort(grpc.StatusCode.INTERNAL, self.abort)
        response = ai_service_pb2.Response(response_text=self.answer, cost=self.cost)
        response.timestamp.GetCurrentTime()
        return response


@pytest.fixture
def agent(settings: Any) -> Iterator[Agent]:
    servicer = Agent()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    ai_service_pb2_grpc.add_AIServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    settings.AGENT_GRPC_TARGET = f"127.0.0.1:{port}"
    settings.AGENT_GRPC_TIMEOUT_SECONDS = 5
    try:
        yield servicer
    finally:
        server.stop(grace=None)


@pytest.fixture
def agent_model(db: None) -> AIModel:
    return AIModel.objects.create(
        name="My agent",
        provider=AIModel.Provider.GRPC_AGENT,
        provider_model="ollama/llama3.1:8b",
        reserve_per_reply=Decimal("0.50"),
        available_to_all=True,
    )


def ask(cast: Cast, text: str = "What is the capital of France?", **extra: Any) -> Any:
    response = cast.client(cast.alice).post(
        f"/api/v1/threads/{cast.thread.pk}/messages/",
        {"text": text, "reply": True, "modelId": "My agent", **extra},
        format="json",
    )
    assert response.status_code == 201, response.content
    return Message.objects.get(pk=response.json()["reply"]["messageId"])


def balance(cast: Cast) -> Decimal:
    return Account.objects.get(user=cast.alice).balance


def test_the_agent_gets_the_turn_and_its_answer_is_the_reply(
    cast: Cast, agent: Agent, agent_model: AIModel
) -> None:
    Thread.objects.filter(pk=cast.thread.pk).update(session_prompt="Answer briefly.")
    ThreadSummary.objects.create(thread=cast.thread, text="They talked about maps.", upto_seq=0)
    post(cast.thread, cast.bob, "Earlier question")
    post(cast.thread, None, "Earlier answer")
    upload = cast.client(cast.alice).post(
        "/api/v1/files/",
        {"file": SimpleUploadedFile("atlas.txt", b"Paris, Lyon", content_type="text/plain")},
        format="multipart",
    )

    reply = ask(cast, fileIds=[upload.json()["id"]])

    assert (reply.text, reply.status, reply.author_id) == ("Agent says hi.", "complete", None)
    assert reply.meta["platformId"] == "grpc_agent" and reply.meta["modelId"] == agent_model.pk
    [request] = agent.requests
    assert request.user_id == cast.alice.pk
    assert request.session_id == cast.thread.pk
    assert request.chat_message == "What is the capital of France?"
    assert (request.model_provider, request.model_name) == ("ollama", "llama3.1:8b")
    assert request.session_prompt == "Answer briefly."
    assert list(request.file_name) == ["atlas.txt"]
    assert request.chat_summary == "They talked about maps."
    assert json.loads(request.chat_history) == [
        {"role": "user", "content": "bob: Earlier question"},
        {"role": "assistant", "content": "Earlier answer"},
    ]
    assert request.balance == pytest.approx(1.0)  # the starting balance, before this reply's hold
    assert request.timestamp.seconds > 0


def test_the_agents_cost_is_charged_to_the_ledger(
    cast: Cast, agent: Agent, agent_model: AIModel
) -> None:
    reply = ask(cast)

    run = AgentRun.objects.get(message=reply)
    assert (run.reserved, run.cost) == (Decimal("0.50"), Decimal("0.25"))
    assert reply.meta["usage"]["cost"] == "0.250000"
    assert "reportedCost" not in reply.meta["usage"]
    assert balance(cast) == Decimal("0.75")
    entries = dict(LedgerEntry.objects.filter(run=run).values_list("kind", "amount"))
    assert entries == {"reserve": Decimal("-0.50"), "settle": Decimal("0.25")}


def test_a_cost_above_the_reservation_is_capped_at_it(
    cast: Cast, agent: Agent, agent_model: AIModel
) -> None:
    agent.cost = 2.0

    reply = ask(cast)

    assert reply.status == "complete"
    assert AgentRun.objects.get(message=reply).cost == Decimal("0.50")
    assert reply.meta["usage"]["cost"] == "0.500000"
    assert reply.meta["usage"]["reportedCost"] == "2.000000"
    assert balance(cast) == Decimal("0.50")


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ({"abort": "model exploded"}, "The agent failed (INTERNAL): model exploded"),
        ({"cost": -1.0}, "The agent reported an impossible cost (-1.0)."),
        ({"answer": "  "}, "The agent answered with no text."),
    ],
)
def test_an_agent_error_fails_the_reply_with_a_readable_reason(
    cast: Cast, agent: Agent, agent_model: AIModel, script: dict[str, Any], reason: str
) -> None:
    for key, value in script.items():
        setattr(agent, key, value)

    reply = ask(cast)

    assert reply.status == "failed"
    assert reply.meta["error"] == reason
    assert AgentRun.objects.get(message=reply).error == reason
    # An empty answer still cost what the agent said; a refused cost or an error cost nothing.
    expected = Decimal("0.75") if script.get("answer") else Decimal("1.00")
    assert balance(cast) == expected


def test_a_timeout_fails_the_reply(
    cast: Cast, agent: Agent, agent_model: AIModel, settings: Any
) -> None:
    settings.AGENT_GRPC_TIMEOUT_SECONDS = 0.3
    agent.delay = 1.0

    reply = ask(cast)

    assert reply.status == "failed"
    assert reply.meta["error"] == "The agent did not answer within 0.3 seconds."
    assert balance(cast) == Decimal("1.00")


def test_an_unreachable_or_unconfigured_agent_fails_the_reply(
    cast: Cast, agent_model: AIModel, settings: Any
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.AGENT_GRPC_TARGET = f"127.0.0.1:{port}"
    settings.AGENT_GRPC_TIMEOUT_SECONDS = 5

    unreachable = ask(cast, "one")

    assert unreachable.status == "failed"
    assert unreachable.meta["error"] == f"The agent cannot be reached (127.0.0.1:{port})."

    settings.AGENT_GRPC_TARGET = ""
    unconfigured = ask(cast, "two")

    assert unconfigured.meta["error"] == (
        "The external agent is not configured (AGENT_GRPC_TARGET)."
    )


def test_upkeep_does_not_call_the_agent(cast: Cast, agent: Agent, agent_model: AIModel) -> None:
    thread, _ = messaging_services.thread_create(creator=cast.alice)  # "New chat": would be titled
    response = cast.client(cast.alice).post(
        f"/api/v1/threads/{thread.pk}/messages/",
        {"text": "hi", "reply": True, "modelId": "My agent"},
        format="json",
    )

    assert response.status_code == 201
    assert len(agent.requests) == 1  # the turn only: no title, no summary request
    assert Thread.objects.get(pk=thread.pk).title == "New chat"


def test_an_outsider_cannot_reach_the_agent(cast: Cast, agent: Agent, agent_model: AIModel) -> None:
    response = cast.client(cast.charlie).post(
        f"/api/v1/threads/{cast.thread.pk}/messages/",
        {"text": "use alice's agent", "reply": True, "modelId": "My agent"},
        format="json",
    )

    assert response.status_code == 404
    assert agent.requests == []
    assert not Account.objects.filter(user=cast.charlie).exists()


async def test_an_ai_at_work_client_reaches_the_agent_by_model_id(
    cast: Cast, agent: Agent, agent_model: AIModel
) -> None:
    """The whole AI-at-Work story: its socket, its integer model_id, its agent contract."""
    from asgiref.sync import sync_to_async

    await sync_to_async(LegacyModelNumber.objects.update_or_create)(
        number=8, defaults={"legacy_name": "llama3.1:8b", "model": agent_model}
    )
    _, token = await sync_to_async(thread_services.token_issue)(user=cast.alice)
    comm = WebsocketCommunicator(application, f"/ws?token={token}")
    connected, _ = await comm.connect(timeout=5)
    assert connected
    try:
        await comm.send_json_to(
            {"type": 3, "data": {"session_id": cast.thread.pk, "model_id": 8, "message": "hi"}}
        )
        answer = await comm.receive_json_from(timeout=5)
    finally:
        await comm.disconnect()

    assert answer["type"] == 3
    assert answer["data"]["message"] == "Agent says hi."
    assert [r.chat_message for r in agent.requests] == ["hi"]


@pytest.mark.parametrize(
    ("value", "ok"),
    [("127.0.0.1:50051", True), ("unix:/run/agent.sock", True), ("agent", False), ("a b:1", False)],
)
def test_a_bad_agent_target_stops_start_up_naming_the_variable(value: str, ok: bool) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "AGENT_GRPC_TARGET": value, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    result = subprocess.run(
        [sys.executable, "-c", "import chatproject.settings"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    assert (result.returncode == 0) == ok, result.stderr[-500:]
    if not ok:
        assert "AGENT_GRPC_TARGET must be host:port" in result.stderr
