from __future__ import annotations

import importlib
from typing import Any

import pytest
from django.apps import apps

from tests.agents.scripted_llm import ScriptedProvider


@pytest.fixture
def scripted_llm(monkeypatch: pytest.MonkeyPatch) -> ScriptedProvider:
    """Every model answers from this script for the test's duration."""
    provider = ScriptedProvider()
    monkeypatch.setattr("agents.llm.get_provider", lambda model: provider)
    return provider


@pytest.fixture
def queued(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every run the services queue, as `run_agent.apply_async`'s keyword arguments, instead of
    running it: the run stays queued (eager Celery would run it at once, ignoring countdown)."""
    from agents.tasks import run_agent

    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(run_agent, "apply_async", lambda **kwargs: sent.append(kwargs))
    return sent


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every event the services publish, in order, instead of sending it."""
    sent: list[dict[str, Any]] = []
    # The module, not the package: `messaging.events.publish` is the function itself.
    publishing = importlib.import_module("messaging.events.publish")
    monkeypatch.setattr(publishing, "publish", lambda event, groups: sent.append(event))
    return sent


@pytest.fixture(autouse=True)
def bundled_model(transactional_db: None) -> None:
    """Transactional tests flush the rows migrations made; put the bundled model back, with
    the migration's own code."""
    migration = importlib.import_module("agents.migrations.0002_default_model")
    migration.create_default_model(apps, None)
