"""Fair scheduling: how long one user's first delta waits while another user has 50 replies queued.

Real processes: daphne with the embedded worker (SQLite, memory broker, in-memory layer), and
daphne with two `celery worker` processes (prefork, concurrency 2; Redis broker and channel
layer; PostgreSQL). The model is bench/token_server.py over the OpenAI API, so every reply
costs the same known time and the machine's two cores are not the bottleneck.

For each profile, in one run:
- unloaded: bob posts a question; the time from his POST to the first delta on his WebSocket;
- loaded: alice posts 50 questions (each reply about 1 s of tokens), then bob asks as before
  while her backlog is still being worked through;
- loaded with the cap off (REPLY_CONCURRENCY_PER_USER=1000): what bob waited before.
Goal (issue 15): loaded p50 within 2x the unloaded p50.

    python bench/fairness.py [--trials N] [--write]

BENCH_REDIS_URL (default redis://127.0.0.1:6379/10) is flushed; BENCH_PG_NAME (default
threadline_fairness) is dropped and made again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import websockets

from bench.common import machine_line, manage, pct, pg_recreate, table, write_section
from bench.startup import free_port
from bench.streaming import BIN, Procs, wait_http

REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
PG_NAME = os.environ.get("BENCH_PG_NAME", "threadline_fairness")
BACKLOG = 50
# alice's replies: 100 tokens at 100/s, about one second each; bob's: 10 tokens.
ALICE_MODEL, BOB_MODEL = "rate-100-n100", "rate-100-n10"


def _model_id(name: str) -> str:
    return "mdl_" + name.replace("-", "_")


async def _thread(http: httpx.AsyncClient) -> str:
    # A titled thread: no title call after the first reply adds work the test did not ask for.
    answer = await http.post("/api/v1/threads/", json={"title": "bench"})
    answer.raise_for_status()
    return str(answer.json()["id"])


async def first_delta_ms(base: str, token: str) -> float:
    """bob's POST to the first delta of its reply on his socket, in milliseconds; waits for the
    reply to complete."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=300) as http:
        thread = await _thread(http)
        ws = await websockets.connect(f"{base.replace('http', 'ws')}/ws/v1/events/?token={token}")
        await ws.send(json.dumps({"action": "subscribe", "threadId": thread}))
        await ws.recv()
        began = time.monotonic()
        posted = await http.post(
            f"/api/v1/threads/{thread}/messages/",
            json={"text": "Quick question", "reply": True, "modelId": _model_id(BOB_MODEL)},
        )
        assert posted.status_code == 201, posted.text
        first = None
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), 300))
            if event["type"] == "chatMessageDelta" and first is None:
                first = time.monotonic() - began
            if event["type"] == "chatMessageCompleted":
                break
        await ws.close()
        assert first is not None
        return first * 1000


async def backlog(base: str, token: str) -> None:
    """alice asks BACKLOG questions, each in its own thread, as fast as the API takes them."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
        for n in range(BACKLOG):
            thread = await _thread(http)
            posted = await http.post(
                f"/api/v1/threads/{thread}/messages/",
                json={"text": f"Long task {n}", "reply": True, "modelId": _model_id(ALICE_MODEL)},
            )
            assert posted.status_code == 201, posted.text


async def alice_unfinished(base: str, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
        threads = (await http.get("/api/v1/threads/?limit=100")).json()["threads"]
        unfinished = 0
        for thread in threads:
            page = (await http.get(f"/api/v1/threads/{thread['id']}/messages/")).json()
            unfinished += sum(1 for m in page["messages"] if m["status"] in ("queued", "streaming"))
        return unfinished


async def _together(*steps: Any) -> None:
    await asyncio.gather(*steps)


def _prepare(env: dict[str, str]) -> tuple[str, str]:
    manage(env, "migrate", "--noinput")
    alice = manage(env, "issue_token", "alice", "--create")
    bob = manage(env, "issue_token", "bob", "--create")
    creations = ";".join(
        f"AIModel.objects.create(id='{_model_id(name)}', name='{name}', provider='openai',"
        f" provider_model='{name}', context_window=100000, max_output_tokens=100000,"
        " available_to_all=True)"
        for name in (ALICE_MODEL, BOB_MODEL)
    )
    manage(env, "shell", "-c", "from agents.models import AIModel;" + creations)
    return alice, bob


def run_profile(profile: str, cap: int, trials: int, token_url: str) -> dict[str, Any]:
    """One fresh deployment: bob unloaded (`trials` times), alice's backlog, bob loaded."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
    }
    env |= {
        "VAR_DIR": tempfile.mkdtemp(prefix="threadline-fairness-"),
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "LOG_LEVEL": "ERROR",
        "LLM_BASE_URL": token_url,
        "REPLY_CONCURRENCY_PER_USER": str(cap),
        "REPLY_QUEUE_PER_USER": str(BACKLOG),
    }
    if profile == "celery":
        import redis

        redis.Redis.from_url(REDIS).flushdb()
        env |= {
            "DATABASE_URL": pg_recreate(PG_NAME),
            "REDIS_URL": REDIS,
            "CELERY_BROKER_URL": REDIS,
        }
    alice, bob = _prepare(env)
    procs = Procs(env)
    try:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        procs.start(
            [
                str(BIN / "daphne"),
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "chatproject.asgi:application",
            ]
        )
        wait_http(f"{base}/healthz")
        if profile == "celery":
            for _ in range(2):
                procs.start(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "chatproject",
                        "worker",
                        "--concurrency",
                        "2",
                        "--loglevel",
                        "ERROR",
                    ]
                )
            time.sleep(6)
        for _ in range(3):
            # Warm-up: four replies at once, so every worker process (and thread) has made its
            # imports and connections before anything is timed.
            asyncio.run(_together(*(first_delta_ms(base, t) for t in (alice, alice, bob, bob))))
        unloaded = [asyncio.run(first_delta_ms(base, bob)) for _ in range(trials)]
        asyncio.run(backlog(base, alice))
        time.sleep(0.5)  # alice's first replies are streaming
        loaded = [asyncio.run(first_delta_ms(base, bob)) for _ in range(trials)]
        left = asyncio.run(alice_unfinished(base, alice))
    finally:
        procs.stop_all()
    print(
        profile,
        cap,
        {"unloaded": [round(x) for x in unloaded], "loaded": [round(x) for x in loaded]},
        f"alice unfinished after: {left}",
        flush=True,
    )
    return {"unloaded": unloaded, "loaded": loaded, "alice_left": left}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()

    procs = Procs(dict(os.environ))
    try:
        token_port = free_port()
        procs.start(
            [
                str(BIN / "uvicorn"),
                "bench.token_server:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(token_port),
                "--log-level",
                "warning",
                "--no-access-log",
            ]
        )
        token_url = f"http://127.0.0.1:{token_port}/v1"
        wait_http(f"{token_url}/models")
        results: dict[tuple[str, int], dict[str, Any]] = {}
        for profile in ("embedded", "celery"):
            results[(profile, 2)] = run_profile(profile, 2, args.trials, token_url)
            # The cap off: what bob waited before fair scheduling (one trial; it is long).
            results[(profile, 1000)] = run_profile(profile, 1000, 1, token_url)
    finally:
        procs.stop_all()

    labels = {
        "embedded": "embedded (daphne + worker thread, SQLite)",
        "celery": "2 Celery workers (PostgreSQL, Redis)",
    }
    rows: list[list[object]] = []
    bullets: list[str] = []
    for profile in ("embedded", "celery"):
        fair, off = results[(profile, 2)], results[(profile, 1000)]
        base50 = statistics.median(fair["unloaded"])
        loaded50 = statistics.median(fair["loaded"])
        rows.append(
            [
                labels[profile],
                base50,
                pct(fair["unloaded"], 99),
                loaded50,
                pct(fair["loaded"], 99),
                f"{loaded50 / base50:.2f}x",
                fair["alice_left"],
                statistics.median(off["loaded"]),
            ]
        )
        verdict = "met" if loaded50 <= 2 * base50 else "NOT met"
        bullets.append(
            f"- {labels[profile]}: bob's first delta {loaded50:.0f} ms with alice's backlog "
            f"against {base50:.0f} ms unloaded, {loaded50 / base50:.2f}x (goal <= 2x): {verdict}; "
            f"with the cap off he waited {statistics.median(off['loaded']):.0f} ms"
        )
    headers = [
        "profile",
        "unloaded p50",
        "unloaded p99",
        "loaded p50",
        "loaded p99",
        "loaded / unloaded",
        "alice's replies still unfinished after",
        "cap off: loaded",
    ]
    body = "\n".join(
        [
            "## Fair scheduling (`bench/fairness.py`)",
            "",
            f"Time from bob's POST to the first delta of his reply on his WebSocket, in "
            f"milliseconds, {args.trials} trials each: with nobody else asking (unloaded) and "
            f"right after alice asked {BACKLOG} questions (loaded; each of her replies is about "
            "1 s of tokens from bench/token_server.py, bob's 0.1 s). REPLY_CONCURRENCY_PER_USER=2, "
            f"REPLY_QUEUE_PER_USER={BACKLOG}; 'cap off' is one trial with "
            "REPLY_CONCURRENCY_PER_USER=1000, what bob waited before fair scheduling.",
            machine_line(),
            "",
            table(headers, rows),
            "",
            *bullets,
            "- why: alice's replies past her 2 are held back, never published, so the broker "
            "and the workers' prefetch hold at most 2 of hers and bob's task finds a free "
            "worker slot (4 threads embedded, 2x2 processes with Celery); with the cap off "
            "her 50 tasks are ahead of his in the broker.",
        ]
    )
    print(body)
    if args.write:
        write_section("fairness", body)


if __name__ == "__main__":
    main()
