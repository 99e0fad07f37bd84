"""A first run against an OpenAI-compatible server with nothing but the environment:
LLM_PROVIDER=openai, LLM_BASE_URL and LLM_MODEL, no catalog work. A real daphne in the embedded
profile, bench/token_server.py as the server; a reply asked with no model comes from it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.conftest import token_server  # noqa: F401 - the fixture, used below
from tests.integration.conftest import _run, _start_daphne, _stop, _wait_healthy

pytestmark = pytest.mark.integration


def test_the_environments_model_answers_a_reply_that_names_no_model(
    token_server: str,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"THREADLINE_TESTING", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="chatproject.settings",
        VAR_DIR=str(tmp_path),
        PYTHONUNBUFFERED="1",
        LLM_PROVIDER="openai",
        LLM_BASE_URL=token_server,
        LLM_API_KEY="unused",
        LLM_MODEL="rate-max-n5",  # the token server: five tokens, at once
    )
    _run(["migrate", "--noinput"], env)
    token = _run(["issue_token", "alice", "--create"], env).strip()
    server = _start_daphne("env-model", env, tmp_path)
    try:
        _wait_healthy(server)
        headers = {"Authorization": f"Bearer {token}"}
        models = httpx.get(f"{server.http}/api/v1/models/", headers=headers).json()
        assert any(m["name"] == "rate-max-n5" for m in models["models"]), models
        thread = httpx.post(f"{server.http}/api/v1/threads/", json={}, headers=headers).json()
        posted = httpx.post(
            f"{server.http}/api/v1/threads/{thread['id']}/messages/",
            json={"text": "hello", "reply": True},
            headers=headers,
        ).json()
        assert posted["reply"]["modelId"] == "mdl_env_default"
        deadline = time.monotonic() + 30
        while True:
            reply = httpx.get(
                f"{server.http}/api/v1/messages/{posted['reply']['messageId']}/", headers=headers
            ).json()
            if reply["status"] in ("complete", "failed"):
                break
            assert time.monotonic() < deadline, reply
            time.sleep(0.1)
        assert reply["status"] == "complete", reply
        assert reply["text"].count(" t") == 5
    finally:
        _stop(server)
