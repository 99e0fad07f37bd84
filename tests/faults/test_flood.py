"""One user floods 50 replies; another user's reply is not held behind the backlog.

Order, not time (the project keeps timings out of tests; bench/fairness.py measures them):
bob's reply completes while at least 40 of alice's 50 are still unfinished (behind a plain
queue, it would wait for the ~48 in front of it), and, sampled from the database through the
whole flood, no user ever has more than REPLY_CONCURRENCY_PER_USER runs `running` at once.

The stack of tests/faults/conftest.py: two Celery workers of two threads each (four replies at
once), so alice's cap of two leaves room for bob.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter

import httpx
import psycopg
import pytest
import websockets

from tests.faults.conftest import Stack, add_models, assert_no_reply_left_open, issue_token

pytestmark = [pytest.mark.integration, pytest.mark.faults]

FLOOD = 50
CAP = 2  # REPLY_CONCURRENCY_PER_USER, the default, set here so the test says what it checks
STILL_UNFINISHED = 40  # of alice's 50, when bob's reply completes
DRAINED_WITHIN = 180.0


@pytest.fixture
def stack_settings() -> dict[str, str]:
    # The flood waits in alice's line rather than being refused (reply_queue_full).
    return {"REPLY_CONCURRENCY_PER_USER": str(CAP), "REPLY_QUEUE_PER_USER": str(FLOOD)}


class RunningSampler(threading.Thread):
    """Counts, over and over, the runs `running` per user; keeps the highest count seen."""

    def __init__(self, database_url: str) -> None:
        super().__init__(daemon=True)
        self.database_url = database_url
        self.highest: Counter[str] = Counter()
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.database_url, autocommit=True) as db:
            while not self.stop.is_set():
                rows = db.execute(
                    "SELECT requested_by_id, count(*) FROM agents_agentrun"
                    " WHERE status = 'running' GROUP BY requested_by_id"
                ).fetchall()
                for user_id, running in rows:
                    self.highest[str(user_id)] = max(self.highest[str(user_id)], running)
                self.samples += 1
                self.stop.wait(0.01)


def _unfinished(database_url: str, user_id: str) -> int:
    with psycopg.connect(database_url) as db:
        row = db.execute(
            "SELECT count(*) FROM agents_agentrun r JOIN messaging_message m"
            " ON m.id = r.message_id WHERE r.requested_by_id = %s"
            " AND m.status IN ('queued', 'streaming')",
            [user_id],
        ).fetchone()
    return int(row[0]) if row else 0


async def _flood(base: str, headers: dict[str, str]) -> list[str]:
    """alice's 50 questions, each in its own thread, a few posts at a time."""
    gate = asyncio.Semaphore(5)

    async def ask(api: httpx.AsyncClient, n: int) -> str:
        async with gate:
            thread = await api.post(f"{base}/api/v1/threads/", json={"title": f"flood {n}"})
            posted = await api.post(
                f"{base}/api/v1/threads/{thread.json()['id']}/messages/",
                json={"text": f"long task {n}", "reply": True, "modelId": "mdl_flood"},
            )
            assert posted.status_code == 201, posted.text
            return str(posted.json()["reply"]["messageId"])

    async with httpx.AsyncClient(headers=headers, timeout=30) as api:
        return list(await asyncio.gather(*(ask(api, n) for n in range(FLOOD))))


async def _bob_asks(base: str, ws: str, headers: dict[str, str], database_url: str) -> int:
    """bob's question, followed on his socket to its terminal event; how many of alice's
    replies were unfinished at that moment."""
    async with httpx.AsyncClient(headers=headers, timeout=30) as api:
        thread_id = (await api.post(f"{base}/api/v1/threads/", json={"title": "bob"})).json()["id"]
        async with websockets.connect(f"{ws}/ws/v1/events/", additional_headers=headers) as socket:
            await socket.send(json.dumps({"action": "subscribe", "threadId": thread_id}))
            assert json.loads(await socket.recv())["type"] == "subscribed"
            posted = await api.post(
                f"{base}/api/v1/threads/{thread_id}/messages/",
                json={"text": "quick question", "reply": True, "modelId": "mdl_quick"},
            )
            assert posted.status_code == 201, posted.text
            reply_id = posted.json()["reply"]["messageId"]
            while True:
                event = json.loads(await asyncio.wait_for(socket.recv(), 60))
                if (
                    event.get("type") == "chatMessageCompleted"
                    and event["data"]["message"]["id"] == reply_id
                ):
                    assert event["data"]["message"]["status"] == "complete", event
                    break
    alice_id = await asyncio.to_thread(_alice_id, database_url)
    return await asyncio.to_thread(_unfinished, database_url, alice_id)


def _alice_id(database_url: str) -> str:
    with psycopg.connect(database_url) as db:
        row = db.execute("SELECT id FROM threads_user WHERE username = 'alice'").fetchone()
    assert row is not None
    return str(row[0])


def test_one_users_flood_does_not_hold_another_users_reply_behind_it(stack: Stack) -> None:
    # alice's replies: 100 tokens at 100 a second; bob's: 10.
    add_models(stack.env, {"mdl_flood": "rate-100-n100", "mdl_quick": "rate-100-n10"})
    bob = {"Authorization": f"Bearer {issue_token(stack.env, 'bob')}"}
    sampler = RunningSampler(stack.database_url)
    sampler.start()
    try:
        flood = asyncio.run(_flood(stack.server.http, stack.headers))
        assert len(set(flood)) == FLOOD
        unfinished = asyncio.run(
            _bob_asks(stack.server.http, stack.server.ws, bob, stack.database_url)
        )
        alice_id = _alice_id(stack.database_url)
        deadline = time.monotonic() + DRAINED_WITHIN
        while _unfinished(stack.database_url, alice_id):
            assert time.monotonic() < deadline, stack.worker_logs()
            time.sleep(0.5)
    finally:
        sampler.stop.set()
        sampler.join(timeout=10)
    assert unfinished >= STILL_UNFINISHED, unfinished
    assert sampler.samples > 100
    # The sampler saw the flood at its cap (so it could have seen more), and never past it.
    assert sampler.highest[alice_id] == CAP, sampler.highest
    assert max(sampler.highest.values()) <= CAP, sampler.highest
    with psycopg.connect(stack.database_url) as db:
        statuses = Counter(
            s for (s,) in db.execute("SELECT status FROM agents_agentrun").fetchall()
        )
    assert statuses == {"complete": FLOOD + 1}, statuses
    assert_no_reply_left_open(stack.database_url)
    print(
        f"bob's reply completed with {unfinished} of alice's {FLOOD} unfinished;"
        f" highest running per user over {sampler.samples} samples: {dict(sampler.highest)}"
    )
