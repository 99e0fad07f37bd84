"""`kill -9` of a daphne with 20 WebSocket clients attached, mid-reply, twice: every client
reconnects to the other daphne with its last seq and resumes with no numbered event missing or
doubled, the text it rebuilt is byte-identical to the stored message, and the reply itself
completes on its first attempt (its worker never depended on the daphne that died).

Two daphnes on the stack of tests/faults/conftest.py (two Celery workers, a private Redis, a
database of its own), bench/token_server.py as the model. While the reply streams, plain
messages are posted into the thread through the surviving daphne, so the seqs a client must
make up for on resuming are real ones. Two clients on the other daphne watch throughout.
"""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import psycopg
import pytest

from tests.faults.conftest import TwoDaphnes, add_models, assert_no_reply_left_open
from tests.faults.followers import Follower, post_notes, seq_problems

pytestmark = [pytest.mark.integration, pytest.mark.faults]

TRIALS = 2
CLIENTS_ON_A = 20
CLIENTS_ON_B = 2
KILL_AT_TOKENS = 40  # of 200 (four seconds of text at 50 a second)
RECOVER_WITHIN = 10.0  # seconds from the kill until every client of A is subscribed on B


async def _kill_mid_reply(daphnes: TwoDaphnes, trial: int) -> list[float]:
    """One trial; the seconds from the kill until each client of A was subscribed on B."""
    stack, a, b = daphnes.stack, daphnes.a, daphnes.b
    async with httpx.AsyncClient(headers=stack.headers, timeout=10) as api:
        created = await api.post(f"{b.http}/api/v1/threads/", json={"title": f"kill {trial}"})
        thread_id = created.json()["id"]
        followers = [
            Follower(name=f"{side}{n}", thread_id=thread_id, headers=stack.headers)
            for side, count in (("a", CLIENTS_ON_A), ("b", CLIENTS_ON_B))
            for n in range(count)
        ]
        await asyncio.gather(*(f.open(a if f.name.startswith("a") else b) for f in followers))
        stop_notes = asyncio.Event()
        notes = asyncio.create_task(post_notes(b.http, stack.headers, thread_id, stop_notes))
        posted = await api.post(
            f"{b.http}/api/v1/threads/{thread_id}/messages/",
            json={"text": "count", "reply": True, "modelId": "mdl_long"},
        )
        assert posted.status_code == 201, posted.text
        reply_id = posted.json()["reply"]["messageId"]
        for follower in followers:
            follower.reply_id = reply_id
        # Once a client's connection is lost, it opens the next one on B.
        following = [asyncio.create_task(f.follow(lambda: b)) for f in followers]
        deadline = time.monotonic() + 30
        while True:
            message = (await api.get(f"{b.http}/api/v1/messages/{reply_id}/")).json()
            if message["status"] == "streaming" and message["text"].count(" t") >= KILL_AT_TOKENS:
                break
            assert time.monotonic() < deadline, f"the reply never streamed: {message}"
            await asyncio.sleep(0.02)
        a.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.to_thread(a.process.wait, 10)
        await asyncio.gather(*following)
        stop_notes.set()
        assert await notes > 0
        stored = (await api.get(f"{b.http}/api/v1/messages/{reply_id}/")).json()
    with psycopg.connect(stack.database_url) as db:
        text, status = db.execute(
            "SELECT text, status FROM messaging_message WHERE id = %s", [reply_id]
        ).fetchone() or (None, None)
        attempts, run_status = db.execute(
            "SELECT attempts, status FROM agents_agentrun WHERE message_id = %s", [reply_id]
        ).fetchone() or (None, None)
    assert (status, run_status, attempts) == ("complete", "complete", 1), stack.worker_logs()
    assert isinstance(text, str) and text.count(" t") == 200 and stored["text"] == text
    problems = [p for f in followers for p in seq_problems(f)]
    problems += [f"{f.name}: {m}" for f in followers for m in f.misfits]
    assert problems == []
    for follower in followers:
        assert follower.text.encode() == text.encode(), follower.name
        assert follower.terminal is not None
        assert follower.terminal["data"]["message"]["text"] == text
        # A's clients lost A once and came back on B; B's never lost theirs.
        expected = 2 if follower.name.startswith("a") else 1
        assert follower.connections == expected, (follower.name, follower.connections)
        # Every A client's seqs reach from before the kill to the end, through the resume.
        assert follower.seqs[0] < follower.terminal["seq"]
    recoveries = [f.subscribed_at[-1] - killed_at for f in followers if f.name.startswith("a")]
    assert len(recoveries) == CLIENTS_ON_A
    return recoveries


def test_kill_9_of_a_daphne_mid_reply_its_clients_resume_on_the_other(
    two_daphnes: TwoDaphnes,
) -> None:
    stack = two_daphnes.stack
    add_models(stack.env, {"mdl_long": "rate-50-n200"})
    recoveries = []
    for trial in range(TRIALS):
        if trial:
            two_daphnes.replace_a()
        recoveries.append(asyncio.run(_kill_mid_reply(two_daphnes, trial)))
    worst = [max(r) for r in recoveries]
    assert max(worst) <= RECOVER_WITHIN, worst
    for worker in stack.workers:
        assert worker.poll() is None, stack.worker_logs()
    assert_no_reply_left_open(stack.database_url)
    print(
        f"{CLIENTS_ON_A} clients of the killed daphne subscribed again on the other within"
        f" {[round(w, 2) for w in worst]} s of the kill (worst of each trial); fastest"
        f" {[round(min(r), 2) for r in recoveries]} s"
    )
