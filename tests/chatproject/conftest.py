"""Fixtures the rate-limit tests share with the agents' tests: the scripted test LLM and the
queued-run recorder."""

from tests.agents.conftest import queued, scripted_llm  # noqa: F401 - the fixtures, shared
