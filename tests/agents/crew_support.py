"""Fixtures and helpers the crew tests share (the scripted crew model is a test double).

Import the fixtures by name into a test module: `from tests.agents.crew_support import ...`.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from django.test import override_settings

from agents.models import AgentRun, AIModel
from messaging.models import Message
from tests.agents.scripted_crew_llm import CrewScript, ScriptedCrewLLM
from tests.agents.scripted_llm import ScriptedProvider
from tests.conftest import Cast
from tests.helpers import post
from threads.models import Thread, User


@pytest.fixture
def crew_script(monkeypatch: pytest.MonkeyPatch, scripted_llm: ScriptedProvider) -> CrewScript:
    script = CrewScript()
    monkeypatch.setattr(ScriptedCrewLLM, "script", script)
    monkeypatch.setattr("agents.crew.ProviderLLM", ScriptedCrewLLM)
    return script


def ask_crew(
    cast: Cast,
    text: str,
    file_ids: list[str] | tuple[str, ...] = (),
    *,
    user: User | None = None,
    thread: Thread | None = None,
    **extra: Any,
) -> Any:
    client = cast.client(user or cast.alice)
    thread = thread or cast.thread
    with override_settings(AGENT_MODE="crew"):
        return client.post(
            f"/api/v1/threads/{thread.pk}/messages/",
            {"text": text, "reply": True, "fileIds": list(file_ids), **extra},
            format="json",
        )


def priced_model(**fields: Any) -> AIModel:
    defaults: dict[str, Any] = {
        "name": "Priced",
        "provider": "local",
        "context_window": 1000,
        "max_output_tokens": 100,
        "price_input_per_1k": Decimal("1.000000"),
        "price_output_per_1k": Decimal("2.000000"),
        "available_to_all": True,
        "supports_tools": True,
    }
    return AIModel.objects.create(**(defaults | fields))


def bare_run(thread: Thread, requester: User, *, mode: str = "crew", **fields: Any) -> AgentRun:
    """An AI message and its run, made directly (no worker, no ledger): a place to hang
    artifacts or to hold a crew slot."""
    message = post(thread, None, "", status=Message.Status.QUEUED)
    model = AIModel.objects.get(pk="mdl_smollm2")
    return AgentRun.objects.create(
        thread=thread, message=message, requested_by=requester, model=model, mode=mode, **fields
    )


def everything_the_models_saw(script: CrewScript) -> str:
    """Every message of every model call, one string: what tools answered shows up in the
    calls that followed them."""
    return "\n".join(
        f"[{agent}] {m['role']}: {m['content']}" for agent, chat in script.calls for m in chat
    )


def as_text(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)
