"""A PostgreSQL restart under load: posts answer 201 or 503 (never 500), every 201 is stored,
a retried 503 lands once, and a reply whose text was complete when the database went away is
closed by retrying its close, not generated again.

One daphne in the production profile's database layer (the pool with health checks) against a
private PostgreSQL that the test stops and starts; the reply comes from bench/token_server.py.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.faults.conftest import (
    PrivatePostgres,
    assert_no_reply_left_open,
    prepare_database,
    server_env,
)
from tests.integration.conftest import Server, _start_daphne, _stop, _wait_healthy

pytestmark = [pytest.mark.integration, pytest.mark.faults]

TRIALS = 3
POSTS_PER_TRIAL = 60


@dataclass
class App:
    server: Server
    token: str
    database_url: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def app(private_postgres: PrivatePostgres, token_server: str, tmp_path: Path) -> Iterator[App]:
    admin = psycopg.connect(private_postgres.url, autocommit=True)
    admin.execute('CREATE DATABASE "threadline"')
    admin.close()
    database_url = private_postgres.database_url("threadline")
    env = server_env(database_url=database_url, llm_url=token_server, var_dir=tmp_path)
    token = prepare_database(env, provider_model="rate-100-n40")
    server = _start_daphne("pg", env, tmp_path)
    try:
        _wait_healthy(server)
        yield App(server=server, token=token, database_url=database_url)
    finally:
        _stop(server)


def _new_thread(app: App) -> str:
    response = httpx.post(
        f"{app.server.http}/api/v1/threads/", json={"title": "outage"}, headers=app.headers
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _post_until_stored(
    app: App, thread_id: str, text: str, answers: list[int], stored: list[str]
) -> None:
    """One message, retried with the same client id after a 503 or a refused connection, as a
    client following Retry-After would; every answer is kept for the assertions."""
    client_id = f"msg-{secrets.token_hex(6)}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            response = httpx.post(
                f"{app.server.http}/api/v1/threads/{thread_id}/messages/",
                json={"id": client_id, "text": text, "reply": False},
                headers=app.headers,
                timeout=30,
            )
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        answers.append(response.status_code)
        if response.status_code in (200, 201):
            stored.append(response.json()["id"])
            return
        assert response.status_code == 503, response.text
        assert response.headers.get("Retry-After", "").isdigit(), response.headers
        assert response.json()["error"]["code"] == "unavailable"
        time.sleep(0.2)
    pytest.fail(f"{text} was never stored")


def test_posts_through_a_postgres_restart_never_answer_500_and_all_are_stored(
    app: App, private_postgres: PrivatePostgres
) -> None:
    for trial in range(TRIALS):
        thread_id = _new_thread(app)
        answers: list[int] = []
        stored: list[str] = []

        def poster(thread_id: str, trial: int, answers: list[int], stored: list[str]) -> None:
            for n in range(POSTS_PER_TRIAL):
                _post_until_stored(app, thread_id, f"trial {trial} post {n}", answers, stored)

        worker = threading.Thread(target=poster, args=(thread_id, trial, answers, stored))
        worker.start()
        while len(stored) < POSTS_PER_TRIAL // 3 and worker.is_alive():
            time.sleep(0.05)
        private_postgres.restart()
        worker.join(timeout=120)
        assert not worker.is_alive()
        assert 500 not in answers, answers
        assert len(stored) == POSTS_PER_TRIAL == len(set(stored))
        history = httpx.get(
            f"{app.server.http}/api/v1/threads/{thread_id}/messages/?limit=200",
            headers=app.headers,
        ).json()
        texts = [m["text"] for m in history["messages"]]
        assert sorted(texts) == sorted(f"trial {trial} post {n}" for n in range(POSTS_PER_TRIAL))
    assert_no_reply_left_open(app.database_url)


def _message(app: App, message_id: str) -> dict[str, Any] | None:
    try:
        response = httpx.get(
            f"{app.server.http}/api/v1/messages/{message_id}/", headers=app.headers, timeout=5
        )
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def test_a_reply_finished_during_an_outage_is_closed_not_generated_again(
    app: App, private_postgres: PrivatePostgres
) -> None:
    for _ in range(TRIALS):
        thread_id = _new_thread(app)
        posted = httpx.post(
            f"{app.server.http}/api/v1/threads/{thread_id}/messages/",
            json={"text": "count for me", "reply": True, "modelId": "mdl_tokens"},
            headers=app.headers,
        )
        assert posted.status_code == 201, posted.text
        reply_id = posted.json()["reply"]["messageId"]
        deadline = time.monotonic() + 30
        while " t" not in (_message(app, reply_id) or {}).get("text", ""):
            assert time.monotonic() < deadline, "the reply never started"
            time.sleep(0.01)
        # 40 tokens at 100/s: the text completes while the database is down, so its close
        # fails and is retried. (An outage before the first token is the reaper's: nothing is
        # lost by asking again.)
        private_postgres.stop()
        time.sleep(3)
        private_postgres.start()
        deadline = time.monotonic() + 60
        while (message := _message(app, reply_id)) is None or message["status"] != "complete":
            assert time.monotonic() < deadline, f"the reply did not end: {message}"
            time.sleep(0.1)
        assert message["text"].count(" t") == 40  # the whole answer, once
        with psycopg.connect(app.database_url) as db:
            attempts, status = db.execute(
                "SELECT attempts, status FROM agents_agentrun WHERE message_id = %s", [reply_id]
            ).fetchone() or (None, None)
        assert (attempts, status) == (1, "complete")
    assert_no_reply_left_open(app.database_url)
