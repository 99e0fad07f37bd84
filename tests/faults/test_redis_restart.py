"""A Redis restart mid-reply, with Redis as broker, channel layer and cache: the Celery
workers stay up, the reply ends, the socket that watched it gets the terminal event without
reconnecting, the ledger balances, and the next reply needs no restart of anything.

Real processes: two Celery workers and one daphne on the real settings, a private redis-server
that the test restarts (tests/faults/conftest.py), a database of its own on the machine's
PostgreSQL, and bench/token_server.py as the model.
"""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
import websockets

from tests.faults.conftest import PrivateRedis, Stack, assert_no_reply_left_open

pytestmark = [pytest.mark.integration, pytest.mark.faults]

TRIALS = 5
TERMINAL_WITHIN = 20.0  # seconds from the restart


def _is_terminal(event: dict[str, Any], message_id: str) -> bool:
    return event.get("type") == "chatMessageCompleted" and (
        event.get("data", {}).get("messageId", event.get("data", {}).get("id")) == message_id
        or message_id in json.dumps(event)
    )


async def _reply_through_a_restart(stack: Stack, redis: PrivateRedis | None) -> float:
    """Ask for a reply with a socket watching; restart Redis once its text is flowing (if
    `redis`); the seconds from the restart to the terminal event on that same socket."""
    base = stack.server.http
    async with httpx.AsyncClient(headers=stack.headers, timeout=10) as api:
        thread_id = (await api.post(f"{base}/api/v1/threads/", json={"title": "t"})).json()["id"]
        async with websockets.connect(
            f"{stack.server.ws}/ws/v1/events/", additional_headers=stack.headers
        ) as socket:
            await socket.send(json.dumps({"action": "subscribe", "threadId": thread_id}))
            assert json.loads(await socket.recv())["type"] == "subscribed"
            posted = await api.post(
                f"{base}/api/v1/threads/{thread_id}/messages/",
                json={"text": "count", "reply": True, "modelId": "mdl_tokens"},
            )
            assert posted.status_code == 201, posted.text
            reply_id = posted.json()["reply"]["messageId"]
            started = time.monotonic()
            restarted_at: float | None = None
            while True:
                if redis is not None and restarted_at is None:
                    message = (await api.get(f"{base}/api/v1/messages/{reply_id}/")).json()
                    if message["status"] == "streaming" and message["text"].count(" t") >= 10:
                        await asyncio.to_thread(redis.restart)
                        restarted_at = time.monotonic()
                try:
                    event = json.loads(await asyncio.wait_for(socket.recv(), 0.05))
                except TimeoutError:
                    event = {}
                if event and _is_terminal(event, reply_id):
                    return time.monotonic() - (restarted_at or started)
                since = time.monotonic() - (restarted_at or started)
                if since > TERMINAL_WITHIN:
                    stored = (await api.get(f"{base}/api/v1/messages/{reply_id}/")).json()
                    pytest.fail(
                        f"no terminal event {since:.1f} s after the restart; stored: "
                        f"{stored['status']}\n{stack.worker_logs()}"
                    )


def test_a_redis_restart_mid_reply_loses_neither_the_workers_nor_the_terminal_event(
    stack: Stack, private_redis: PrivateRedis
) -> None:
    recoveries = [
        asyncio.run(_reply_through_a_restart(stack, private_redis)) for _ in range(TRIALS)
    ]
    for worker in stack.workers:
        assert worker.poll() is None, f"a worker died:\n{stack.worker_logs()}"
    # Later replies need no restart of anything.
    asyncio.run(_reply_through_a_restart(stack, None))
    with psycopg.connect(stack.database_url) as db:
        runs = db.execute("SELECT status FROM agents_agentrun").fetchall()
        assert [status for (status,) in runs] == ["complete"] * (TRIALS + 1)
        per_run = db.execute(
            "SELECT run_id, count(*) FILTER (WHERE kind = 'reserve'),"
            " count(*) FILTER (WHERE kind = 'settle') FROM agents_ledgerentry"
            " WHERE run_id IS NOT NULL GROUP BY run_id"
        ).fetchall()
        assert len(per_run) == TRIALS + 1
        assert all((reserves, settles) == (1, 1) for _, reserves, settles in per_run), per_run
        balance, ledger = db.execute(
            "SELECT a.balance, (SELECT sum(amount) FROM agents_ledgerentry e"
            " WHERE e.account_id = a.id) FROM agents_account a"
        ).fetchone() or (None, None)
        assert isinstance(balance, Decimal) and balance == ledger
    assert_no_reply_left_open(stack.database_url)
    print(f"terminal event after each restart: {[round(r, 2) for r in recoveries]} s")


QUEUED_TRIALS = 3
QUEUED_REPLIES = 3  # two dispatched (the per-user cap) and one held in alice's line
ALL_END_WITHIN = 120.0


def test_a_redis_restart_with_tasks_queued_still_ends_every_accepted_run(
    stack: Stack, private_redis: PrivateRedis
) -> None:
    """This machine's Redis keeps nothing on disk: a restart empties the broker's queue. The
    runs whose tasks were in it are sent again by the reaper (QUEUED_STALE_SECONDS, 10 s here)
    and every one ends, with no reservation left held."""
    from tests.faults.conftest import celery_worker

    base = stack.server.http
    endings: list[float] = []
    for trial in range(QUEUED_TRIALS):
        for worker in stack.workers:
            worker.terminate()
        for worker in stack.workers:
            worker.wait(timeout=30)
        thread_id = httpx.post(
            f"{base}/api/v1/threads/", json={"title": "queued"}, headers=stack.headers
        ).json()["id"]
        replies = []
        for n in range(QUEUED_REPLIES):
            posted = httpx.post(
                f"{base}/api/v1/threads/{thread_id}/messages/",
                json={"text": f"q{n}", "reply": True, "modelId": "mdl_tokens"},
                headers=stack.headers,
            )
            assert posted.status_code == 201, posted.text
            replies.append(posted.json()["reply"]["messageId"])
        private_redis.restart()  # the queued tasks go with it
        restarted = time.monotonic()
        stack.worker_names = [f"worker-q{trial}-{n}" for n in (1, 2)]
        stack.workers = [celery_worker(name, stack.env, stack.logs) for name in stack.worker_names]
        pending = set(replies)
        while pending:
            assert time.monotonic() - restarted < ALL_END_WITHIN, (
                f"still not ended: {pending}\n{stack.worker_logs()}"
            )
            for message_id in list(pending):
                message = httpx.get(
                    f"{base}/api/v1/messages/{message_id}/", headers=stack.headers
                ).json()
                if message["status"] in ("complete", "failed", "cancelled"):
                    pending.discard(message_id)
            time.sleep(0.5)
        endings.append(time.monotonic() - restarted)
    with psycopg.connect(stack.database_url) as db:
        unsettled = db.execute(
            "SELECT r.id, r.status FROM agents_agentrun r WHERE NOT EXISTS (SELECT 1 FROM"
            " agents_ledgerentry e WHERE e.run_id = r.id AND e.kind = 'settle')"
        ).fetchall()
        assert unsettled == []  # no reservation left held
        statuses = [s for (s,) in db.execute("SELECT status FROM agents_agentrun").fetchall()]
        assert len(statuses) == QUEUED_TRIALS * QUEUED_REPLIES
    assert_no_reply_left_open(stack.database_url)
    print(f"every run ended within {[round(e, 1) for e in endings]} s of the restart")
