"""The crew with the REAL bundled model (SmolLM2-135M in-process; no test double): it cannot
drive tools, but the crew still runs end to end and answers within a bounded time.

One test only: on two cores every model call of the crew takes seconds.
"""

from __future__ import annotations

import importlib
import time

import pytest
from django.apps import apps
from django.test import override_settings

from agents import services
from agents.models import AgentRun, AIModel, CrewSlot
from tests.conftest import Cast
from tests.integration.conftest import unavailable

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

TIME_LIMIT_SECONDS = 240


@pytest.fixture
def bundled(transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> AIModel:
    from agents.llm import LLMError
    from agents.llm.local import bundled_model_path

    try:
        bundled_model_path()
    except LLMError as exc:
        unavailable(str(exc))
    # A transactional test may start after another flushed the migration's rows.
    importlib.import_module("agents.migrations.0002_default_model").create_default_model(apps, None)
    model = AIModel.objects.get(pk="mdl_smollm2")
    model.max_output_tokens = 48
    model.save(update_fields=["max_output_tokens"])
    return model


@override_settings(AGENT_MODE="crew", CREW_MAX_STEPS=2, RUN_TIME_LIMIT_SECONDS=200)
def test_the_crew_with_the_bundled_model_answers_a_simple_question(
    cast: Cast, bundled: AIModel
) -> None:
    started = time.monotonic()
    response = cast.client(cast.alice).post(
        f"/api/v1/threads/{cast.thread.pk}/messages/",
        {"text": "What is the capital of France?", "reply": True, "modelId": bundled.pk},
        format="json",
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 201, response.content
    run = AgentRun.objects.select_related("message").get(pk=response.json()["reply"]["runId"])
    assert run.mode == "crew"
    assert run.status in services.TERMINAL
    assert run.status == AgentRun.Status.COMPLETE, run.error
    assert run.message.text.strip()
    assert elapsed < TIME_LIMIT_SECONDS, elapsed
    agents = run.usage["agents"]
    assert {"planner", "writer"} <= set(agents)
    assert all(entry["calls"] >= 1 for entry in agents.values())
    assert run.completion_tokens > 0
    assert not CrewSlot.objects.filter(run__isnull=False).exists()
