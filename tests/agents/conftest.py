from __future__ import annotations

import importlib

import pytest
from django.apps import apps

from tests.agents.scripted_llm import ScriptedProvider


@pytest.fixture
def scripted_llm(monkeypatch: pytest.MonkeyPatch) -> ScriptedProvider:
    """Every model answers from this script for the test's duration."""
    provider = ScriptedProvider()
    monkeypatch.setattr("agents.services.get_provider", lambda model: provider)
    return provider


@pytest.fixture(autouse=True)
def bundled_model(transactional_db: None) -> None:
    """Transactional tests flush the rows migrations made; put the bundled model back, with
    the migration's own code."""
    migration = importlib.import_module("agents.migrations.0002_default_model")
    migration.create_default_model(apps, None)
