"""AI replies with real parts: the bundled model in-process, `llama_cpp.server` serving it over
the OpenAI API, daphne, and Celery worker processes on the local Redis and PostgreSQL.

Skipped with a reason when PostgreSQL or Redis is missing, except in CI (CI=true), where that is
a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import free_port, unavailable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/6"


def _wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def test_the_bundled_model_streams_in_process() -> None:
    from agents.llm import Completion
    from agents.llm.local import LocalProvider

    provider = LocalProvider()
    completion = Completion()
    pieces = list(
        provider.stream(
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=24,
            completion=completion,
        )
    )
    assert len(pieces) > 1  # it streamed, piece by piece
    assert "".join(pieces).strip()
    assert completion.usage.prompt_tokens > 0
    assert 0 < completion.usage.completion_tokens <= 24


class Stack:
    """PostgreSQL database, Redis, llama_cpp.server, daphne and Celery workers for one module."""

    def __init__(self) -> None:
        self.token = ""
        self.base = ""
        self.ws = ""
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.db_name = f"threadline_ai_{secrets.token_hex(4)}"
        self.logs = Path(tempfile.mkdtemp(prefix="threadline-it-ai-"))
        self.env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
        self.env |= {
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{self.db_name}",
            "REDIS_URL": REDIS_URL,
            "CELERY_BROKER_URL": REDIS_URL,
            "VAR_DIR": str(self.logs / "var"),
            "DJANGO_SETTINGS_MODULE": "chatproject.settings",
            "RUN_STALE_SECONDS": "3",
            "STREAM_SAVE_MS": "100",
            "LOG_LEVEL": "WARNING",
        }

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def manage(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()

    def worker(self, name: str) -> subprocess.Popen[bytes]:
        proc = self.start(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "chatproject",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                "2",
                "--without-heartbeat",
                "--without-mingle",
                "--without-gossip",
                "-n",
                f"{name}@%h",
                "--loglevel",
                "WARNING",
            ],
        )
        time.sleep(4)  # the worker connects to the broker and starts consuming
        assert proc.poll() is None, (self.logs / f"{name}.log").read_text()
        return proc

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    try:
        import psycopg
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except Exception as exc:
        unavailable(f"PostgreSQL and Redis on 127.0.0.1 are needed: {exc}")
    from agents.llm.local import bundled_model_path

    s = Stack()
    admin.execute(f'CREATE DATABASE "{s.db_name}"')
    try:
        llama_port, web_port = free_port(), free_port()
        s.env["LLM_BASE_URL"] = f"http://127.0.0.1:{llama_port}/v1"
        s.start(
            "llama",
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(bundled_model_path()),
                "--host",
                "127.0.0.1",
                "--port",
                str(llama_port),
                "--n_threads",
                "1",
                "--n_ctx",
                "2048",
            ],
        )
        s.manage("migrate", "--noinput")
        s.token = s.manage("issue_token", "alice", "--create")
        s.manage(
            "shell",
            "-c",
            (
                "from decimal import Decimal; from agents.models import AIModel;"
                "from agents.services import credit_add; from threads.models import User;"
                "AIModel.objects.create(id='mdl_llamaserver', name='SmolLM2 via llama.cpp server',"
                " provider='openai', provider_model='smollm2', context_window=2048,"
                " max_output_tokens=200, price_input_per_1k=Decimal('0.01'),"
                " price_output_per_1k=Decimal('0.02'), available_to_all=True);"
                "credit_add(user=User.objects.get(username='alice'),"
                " amount=Decimal('5'), note='it')"
            ),
        )
        s.base = f"http://127.0.0.1:{web_port}"
        s.ws = f"ws://127.0.0.1:{web_port}/ws/v1/events/"
        s.start(
            "daphne",
            [
                str(Path(sys.executable).with_name("daphne")),
                "-b",
                "127.0.0.1",
                "-p",
                str(web_port),
                "chatproject.asgi:application",
            ],
        )
        _wait_http(f"{s.base}/healthz")
        _wait_http(f"http://127.0.0.1:{llama_port}/v1/models")
        yield s
    finally:
        s.stop()
        admin.execute(f'DROP DATABASE IF EXISTS "{s.db_name}" WITH (FORCE)')
        admin.close()


def _api(stack: Stack) -> httpx.Client:
    return httpx.Client(
        base_url=stack.base,
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=30,
    )


async def _follow(stack: Stack, thread_id: str, last_seq: int | None = None) -> Any:
    import websockets

    ws = await websockets.connect(f"{stack.ws}?token={stack.token}")
    frame: dict[str, Any] = {"action": "subscribe", "threadId": thread_id}
    if last_seq is not None:
        frame["lastSeq"] = last_seq
    await ws.send(json.dumps(frame))
    return ws


async def _events_until_completed(ws: Any, message_id: str, timeout: float) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        seen.append(event)
        data = event.get("data", {})
        if event["type"] == "chatMessageCompleted" and data["message"]["id"] == message_id:
            return seen
    raise AssertionError(f"no chatMessageCompleted for {message_id}: {[e['type'] for e in seen]}")


def _apply_deltas(text: str, events: list[dict[str, Any]], message_id: str) -> str:
    """What a client does with deltas: place each at its offset; skip what it already holds."""
    for event in events:
        data = event.get("data", {})
        if event["type"] != "chatMessageDelta" or data["messageId"] != message_id:
            continue
        offset, piece = data["offset"], data["text"]
        assert offset <= len(text), "a gap: text was missed"
        text = text[:offset] + piece if offset + len(piece) > len(text) else text
    return text


def test_a_reply_from_a_real_worker_and_model_server_streams_and_survives_a_reconnect(stack):
    worker = stack.worker("worker-a")
    try:
        with _api(stack) as api:
            thread = api.post("/api/v1/threads/", json={"title": "real worker"}).json()["id"]

            async def scenario() -> None:
                ws = await _follow(stack, thread)
                assert json.loads(await ws.recv())["type"] == "subscribed"
                posted = api.post(
                    f"/api/v1/threads/{thread}/messages/",
                    json={
                        "text": "Write a long story about a lighthouse keeper.",
                        "reply": True,
                        "modelId": "mdl_llamaserver",
                    },
                )
                assert posted.status_code == 201, posted.text
                reply_id = posted.json()["reply"]["messageId"]
                # Read until two deltas arrived, then drop the connection mid-reply.
                first: list[dict[str, Any]] = []
                while sum(e["type"] == "chatMessageDelta" for e in first) < 2:
                    first.append(json.loads(await asyncio.wait_for(ws.recv(), 60)))
                last_seq = max(e["seq"] for e in first if e["type"] != "chatMessageDelta")
                await ws.close()
                # Reconnect (resume from the last numbered event), then read the saved text.
                ws = await _follow(stack, thread, last_seq=last_seq)
                # Following for sure (the acknowledgement) before reading the saved text.
                assert json.loads(await ws.recv())["type"] == "subscribed"
                partial = api.get(f"/api/v1/messages/{reply_id}/").json()["text"]
                rest = await _events_until_completed(ws, reply_id, timeout=120)
                await ws.close()
                stored = api.get(f"/api/v1/messages/{reply_id}/").json()
                assert stored["status"] == "complete", stored
                completed = rest[-1]["data"]
                assert completed["message"]["text"] == stored["text"]
                # The client's own reconstruction is byte-identical to the stored message.
                assert _apply_deltas(partial, rest, reply_id) == stored["text"]
                assert completed["usage"]["completionTokens"] > 0
                assert stored["meta"]["modelId"] == "mdl_llamaserver"
                assert stored["meta"]["platformId"] == "openai"

            asyncio.run(scenario())
    finally:
        worker.terminate()
        worker.wait(timeout=10)


def test_kill_9_of_the_worker_mid_reply_ends_in_a_rerun_without_double_charge(stack):
    worker_a = stack.worker("worker-kill-a")
    with _api(stack) as api:
        thread = api.post("/api/v1/threads/", json={"title": "kill -9"}).json()["id"]

        async def scenario() -> None:
            ws = await _follow(stack, thread)
            assert json.loads(await ws.recv())["type"] == "subscribed"
            posted = api.post(
                f"/api/v1/threads/{thread}/messages/",
                json={
                    "text": "Tell a very long tale about the sea.",
                    "reply": True,
                    "modelId": "mdl_llamaserver",
                },
            )
            reply_id = posted.json()["reply"]["messageId"]
            run_id = posted.json()["reply"]["runId"]
            try:
                while True:  # wait until the reply is being written
                    event = json.loads(await asyncio.wait_for(ws.recv(), 60))
                    if event["type"] == "chatMessageDelta":
                        break
            except TimeoutError:
                state = stack.manage(
                    "shell",
                    "-c",
                    (
                        "from agents.models import AgentRun;"
                        f"print(AgentRun.objects.filter(pk='{run_id}').values().first())"
                    ),
                )
                raise AssertionError(f"the reply never started streaming: {state}") from None
            worker_a.send_signal(signal.SIGKILL)
            worker_a.wait(timeout=10)
            worker_b = stack.worker("worker-kill-b")  # its reaper finds the orphaned run
            try:
                rest = await _events_until_completed(ws, reply_id, timeout=120)
            finally:
                worker_b.terminate()
                worker_b.wait(timeout=10)
            await ws.close()
            statuses = [e["data"].get("status") for e in rest if e["type"] == "chatMessageUpdated"]
            assert "queued" in statuses  # clients were told the reply restarts
            final = rest[-1]["data"]["message"]
            assert final["status"] in {"complete", "failed"}
            stored = api.get(f"/api/v1/messages/{reply_id}/").json()
            assert stored["text"] == final["text"]
            ledger = json.loads(
                stack.manage(
                    "shell",
                    "-c",
                    (
                        "import json; from agents.models import LedgerEntry, AgentRun;"
                        f"run = AgentRun.objects.get(pk='{run_id}');"
                        "entries = list(LedgerEntry.objects.filter(run=run)"
                        ".values_list('kind', flat=True));"
                        "acct = run.requested_by.account;"
                        "total = sum(e.amount for e in acct.entries.all());"
                        "print(json.dumps({'entries': sorted(entries), 'attempts': run.attempts,"
                        " 'balance_matches': acct.balance == total, 'balance': str(acct.balance)}))"
                    ),
                ).splitlines()[-1]
            )
            assert ledger["entries"] == ["reserve", "settle"]  # charged once, whatever happened
            assert ledger["attempts"] == 2
            assert ledger["balance_matches"]
            assert not ledger["balance"].startswith("-")

        asyncio.run(scenario())
