"""The crew end to end with the scripted crew model (a test double) and eager Celery tasks."""

from __future__ import annotations

import pytest
from django.test import override_settings

from agents.models import AgentRun, Artifact
from messaging.models import Message
from tests.agents.scripted_crew_llm import CrewScript, ScriptedCrewLLM, final, tool_call
from tests.agents.scripted_llm import ScriptedProvider
from tests.helpers import upload

pytestmark = pytest.mark.django_db(transaction=True)

SALES_CSV = (
    b"region,product,amount\nNorth,apples,10\nSouth,pears,5\nNorth,pears,7.5\nEast,apples,2\n"
)


@pytest.fixture
def crew_script(monkeypatch: pytest.MonkeyPatch, scripted_llm: ScriptedProvider) -> CrewScript:
    script = CrewScript()
    monkeypatch.setattr(ScriptedCrewLLM, "script", script)
    monkeypatch.setattr("agents.crew.ProviderLLM", ScriptedCrewLLM)
    return script


def _ask_crew(cast, text, file_ids=()):
    client = cast.client(cast.alice)
    with override_settings(AGENT_MODE="crew"):
        return client.post(
            f"/api/v1/threads/{cast.thread.pk}/messages/",
            {"text": text, "reply": True, "fileIds": list(file_ids)},
            format="json",
        )


def test_a_csv_question_yields_a_chart_and_a_table(cast, crew_script, published):
    file_id = upload(cast.client(cast.alice), "sales.csv", SALES_CSV, "text/csv").json()["id"]
    crew_script.replies = {
        "planner": ["SPECIALISTS: analyst"],
        "analyst": [
            tool_call("make_chart", file="sales.csv", group_by="region", value="amount"),
            tool_call("make_table", file="sales.csv", group_by="region", value="amount"),
            final("North sold 17.5, South 5, East 2."),
        ],
        "writer": [final("North leads with 17.5; see the chart and the table.")],
    }
    response = _ask_crew(cast, "Chart the sales total by region", [file_id])
    assert response.status_code == 201, response.content
    reply_id = response.json()["reply"]["messageId"]
    run = AgentRun.objects.get(message_id=reply_id)
    assert run.status == AgentRun.Status.COMPLETE, run.error
    assert run.mode == "crew"
    message = Message.objects.get(pk=reply_id)
    assert message.text.startswith("North leads with 17.5")
    assert "file sales.csv" in message.text

    artifacts = list(Artifact.objects.filter(message_id=reply_id).order_by("created_at"))
    assert [a.kind for a in artifacts] == ["chart", "table"]
    chart, table = artifacts
    assert chart.content.open("rb").read()[:8] == b"\x89PNG\r\n\x1a\n"
    assert chart.data["rows"] == [["North", "17.50"], ["South", "5"], ["East", "2"]]
    assert table.content.open("rb").read().decode() == (
        "region,sum of amount\r\nNorth,17.50\r\nSouth,5\r\nEast,2\r\n"
    )
    assert run.usage["agents"].keys() == {"planner", "analyst", "writer"}
    assert run.usage["agents"]["analyst"]["calls"] == 3
    assert run.usage["tools"]["make_chart"]["calls"] == 1
    assert message.meta["usage"]["agents"]["writer"]["calls"] == 1

    kinds = [(e["type"], e["data"].get("agent"), e["data"].get("step")) for e in published]
    steps = [k for k in kinds if k[0] in {"chatAgentStep", "chatArtifactAdded"}]
    print(steps)
    assert steps[0] == ("chatAgentStep", "planner", "started")
    assert kinds[-1][0] == "chatMessageCompleted"
