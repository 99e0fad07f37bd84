"""`kill -9` of the Celery worker writing a reply, ten times: every reply ends (complete or
failed), the socket watching it hears of it within 10 s of the kill, each run has one
reservation and at most one settlement, and the balance equals the ledger.

The stack is tests/faults/conftest.py's: two real workers, daphne, a private Redis, and the
token server as the model. A killed worker is replaced by a new one, so two are always there.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from decimal import Decimal

import httpx
import psycopg
import pytest
import websockets

from tests.faults.conftest import Stack, assert_no_reply_left_open, celery_worker

pytestmark = [pytest.mark.integration, pytest.mark.faults]

TRIALS = 10
TOLD_WITHIN = 10.0
ENDS_WITHIN = 60.0


def _received(stack: Stack) -> dict[int, int]:
    """How many tasks each live worker has taken, by position in stack.workers."""
    counts = {}
    for index, name in enumerate(stack.worker_names):
        log = stack.logs / f"{name}.log"
        counts[index] = log.read_text(errors="replace").count("] received")
    return counts


async def _drain(socket: websockets.ClientConnection) -> None:
    while True:
        try:
            await asyncio.wait_for(socket.recv(), 0.05)
        except TimeoutError:
            return


async def _kill_mid_reply(stack: Stack, trial: int) -> tuple[float, str]:
    """Seconds from the kill until the socket heard about the reply; its final status."""
    base = stack.server.http
    async with httpx.AsyncClient(headers=stack.headers, timeout=10) as api:
        thread_id = (await api.post(f"{base}/api/v1/threads/", json={"title": "k"})).json()["id"]
        async with websockets.connect(
            f"{stack.server.ws}/ws/v1/events/", additional_headers=stack.headers
        ) as socket:
            await socket.send(json.dumps({"action": "subscribe", "threadId": thread_id}))
            assert json.loads(await socket.recv())["type"] == "subscribed"
            before = _received(stack)
            posted = await api.post(
                f"{base}/api/v1/threads/{thread_id}/messages/",
                json={"text": "count", "reply": True, "modelId": "mdl_tokens"},
            )
            reply_id = posted.json()["reply"]["messageId"]
            deadline = time.monotonic() + 20
            while True:
                message = (await api.get(f"{base}/api/v1/messages/{reply_id}/")).json()
                if message["status"] == "streaming" and message["text"].count(" t") >= 5:
                    break
                assert time.monotonic() < deadline, f"never streamed: {message}"
                await asyncio.sleep(0.02)
            after = _received(stack)
            busy = [i for i in after if after[i] > before.get(i, 0)]
            assert len(busy) == 1, (before, after)
            victim = stack.workers[busy[0]]
            await _drain(socket)  # what was said before the kill does not count as told
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=10)
            killed_at = time.monotonic()
            name = f"worker-{trial + 3}"
            stack.workers[busy[0]] = celery_worker(name, stack.env, stack.logs)
            stack.worker_names[busy[0]] = name
            told: float | None = None
            while time.monotonic() - killed_at < ENDS_WITHIN:
                try:
                    event = json.loads(await asyncio.wait_for(socket.recv(), 0.2))
                except TimeoutError:
                    continue
                if reply_id not in json.dumps(event) or event.get("type") == "chatMessageDelta":
                    continue  # deltas the dead worker published before it died
                told = told if told is not None else time.monotonic() - killed_at
                if event.get("type") == "chatMessageCompleted":
                    break
            final = (await api.get(f"{base}/api/v1/messages/{reply_id}/")).json()
            assert told is not None, f"the socket heard nothing: {final}\n{stack.worker_logs()}"
            return told, final["status"]


def test_kill_9_of_the_worker_mid_reply_ends_every_reply_and_charges_once(stack: Stack) -> None:
    outcomes = [asyncio.run(_kill_mid_reply(stack, trial)) for trial in range(TRIALS)]
    told = [seconds for seconds, _ in outcomes]
    assert all(status in ("complete", "failed") for _, status in outcomes), outcomes
    assert max(told) <= TOLD_WITHIN, told
    with psycopg.connect(stack.database_url) as db:
        statuses = [s for (s,) in db.execute("SELECT status FROM agents_agentrun").fetchall()]
        assert len(statuses) == TRIALS and set(statuses) <= {"complete", "failed"}
        per_run = db.execute(
            "SELECT count(*) FILTER (WHERE kind = 'reserve'),"
            " count(*) FILTER (WHERE kind = 'settle') FROM agents_ledgerentry"
            " WHERE run_id IS NOT NULL GROUP BY run_id"
        ).fetchall()
        assert all(reserves == 1 and settles <= 1 for reserves, settles in per_run), per_run
        balance, ledger = db.execute(
            "SELECT a.balance, (SELECT sum(amount) FROM agents_ledgerentry e"
            " WHERE e.account_id = a.id) FROM agents_account a"
        ).fetchone() or (None, None)
        assert isinstance(balance, Decimal) and balance == ledger
    for worker in stack.workers:
        assert isinstance(worker, subprocess.Popen) and worker.poll() is None
    assert_no_reply_left_open(stack.database_url)
    print(
        "told after the kill (s):",
        [round(t, 2) for t in told],
        "; endings:",
        [status for _, status in outcomes],
    )
