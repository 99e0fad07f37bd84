from __future__ import annotations

import pytest

from tests.agents.scripted_llm import ScriptedProvider


@pytest.fixture
def scripted_llm(monkeypatch: pytest.MonkeyPatch) -> ScriptedProvider:
    """Every model answers from this script for the test's duration."""
    provider = ScriptedProvider()
    monkeypatch.setattr("agents.services.get_provider", lambda model: provider)
    return provider
