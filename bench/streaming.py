"""Streaming: tokens from a model, through a Celery worker and the channel layer, to WebSocket and
SSE clients.

Part 1, token latency. bench/token_server.py streams tokens at fixed rates (100, 1,000 and 3,000
per second, and as fast as it can) over the OpenAI API; each token carries the time it was sent.
A real Celery worker runs the reply through the `openai` provider; a WebSocket client and an SSE
client on daphne time every token's arrival. With the batching window off (STREAM_FLUSH_MS=0)
and at its default (50 ms). Also the worker's CPU per 1,000 tokens and the highest rate it kept
up with. Baseline in the same run: raw Redis PUBLISH to a subscriber.

Part 2, time to first token with the bundled model served by llama_cpp.server: from the user's
post to the first delta on a socket, against the same request sent to that server directly, in a
new thread and in a thread of 1,000 messages.

    python bench/streaming.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import websockets

from bench.common import (
    ROOT,
    machine_line,
    manage,
    pct,
    pg_recreate,
    setup_django,
    table,
    write_section,
)
from bench.startup import free_port

BIN = Path(sys.executable).parent
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
TOKEN = re.compile(r" t(\d+)")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Procs:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], **env: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env=self.env | env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def worker(self, **env: str) -> subprocess.Popen[bytes]:
        proc = self.start(
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
                "--loglevel",
                "ERROR",
            ],
            **env,
        )
        time.sleep(4)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                self.stop(proc)


def wait_http(url: str) -> None:
    for _ in range(600):
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} never answered")


async def redis_floor(count: int, rate: int) -> list[float]:
    """Latency of raw Redis PUBLISH → subscriber, milliseconds."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS)
    pubsub = client.pubsub()
    await pubsub.subscribe("bench-floor")
    await pubsub.get_message(timeout=1)
    latencies: list[float] = []

    async def reader() -> None:
        while len(latencies) < count:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message:
                latencies.append((time.monotonic_ns() - int(message["data"])) / 1e6)

    task = asyncio.create_task(reader())
    start = time.monotonic()
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await client.publish("bench-floor", str(time.monotonic_ns()))
    await asyncio.wait_for(task, 30)
    await pubsub.aclose()
    await client.aclose()
    return latencies


async def one_reply(base: str, token: str, model: str) -> dict[str, Any]:
    """Post a question answered by `model`; time every token at a WS and an SSE client."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as http:
        thread = (await http.post("/api/v1/threads/", json={"title": "bench"})).json()["id"]
        ws = await websockets.connect(
            f"{base.replace('http', 'ws')}/ws/v1/events/?token={token}", max_queue=None
        )
        await ws.send(json.dumps({"action": "subscribe", "threadId": thread}))
        await ws.recv()
        ws_lat: list[float] = []
        ws_times: list[tuple[int, int]] = []  # (sent, received), monotonic ns
        sse_lat: list[float] = []
        done = asyncio.Event()

        async def read_ws() -> None:
            async for text in ws:
                now = time.monotonic_ns()
                event = json.loads(text)
                if event["type"] == "chatMessageDelta":
                    sent = [int(t) for t in TOKEN.findall(event["data"]["text"])]
                    ws_lat.extend((now - t) / 1e6 for t in sent)
                    ws_times.extend((t, now) for t in sent)
                elif event["type"] == "chatMessageCompleted":
                    done.set()
                    return

        async def read_sse() -> None:
            async with http.stream("GET", f"/api/v1/events/?threadId={thread}") as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    now = time.monotonic_ns()
                    event = json.loads(line[6:])
                    if event["type"] == "chatMessageDelta":
                        sse_lat.extend(
                            (now - int(t)) / 1e6 for t in TOKEN.findall(event["data"]["text"])
                        )
                    elif event["type"] == "chatMessageCompleted":
                        return

        readers = [asyncio.create_task(read_ws()), asyncio.create_task(read_sse())]
        await asyncio.sleep(0.3)  # both clients are following before the question goes in
        began = time.monotonic()
        posted = await http.post(
            f"/api/v1/threads/{thread}/messages/",
            json={"text": "go", "reply": True, "modelId": model},
        )
        assert posted.status_code == 201, posted.text
        await asyncio.wait_for(asyncio.gather(*readers), 300)
        elapsed = time.monotonic() - began
        await ws.close()
        return {"ws": ws_lat, "sse": sse_lat, "elapsed": elapsed, "ws_times": ws_times}


async def ttft_ours(base: str, token: str, thread: str, model: str) -> float:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as http:
        ws = await websockets.connect(f"{base.replace('http', 'ws')}/ws/v1/events/?token={token}")
        await ws.send(json.dumps({"action": "subscribe", "threadId": thread}))
        await ws.recv()
        began = time.monotonic()
        posted = await http.post(
            f"/api/v1/threads/{thread}/messages/",
            json={"text": "Say hi to the team.", "reply": True, "modelId": model},
        )
        assert posted.status_code == 201, posted.text
        first = None
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), 60))
            if event["type"] == "chatMessageDelta" and first is None:
                first = time.monotonic() - began
            if event["type"] == "chatMessageCompleted":
                break
        await ws.close()
        await asyncio.sleep(1.5)  # let the worker's upkeep calls finish before the next trial
        assert first is not None
        return first * 1000


async def context_like_ours(base: str, token: str, thread: str) -> list[dict[str, str]]:
    """The messages Threadline sends for 'Say hi to the team.' in `thread` (agents.context)."""
    from agents.context import BASE_PROMPT

    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
        page = (await http.get(f"/api/v1/threads/{thread}/messages/?limit=19")).json()
    turns = [
        {
            "role": "user" if m["userId"] else "assistant",
            "content": f"bench: {m['text']}" if m["userId"] else m["text"],
        }
        for m in page["messages"]
        if m["text"]
    ]
    return [
        {"role": "system", "content": BASE_PROMPT},
        *turns,
        {"role": "user", "content": "bench: Say hi to the team."},
    ]


async def ttft_direct(llama: str, messages: list[dict[str, str]]) -> float:
    async with httpx.AsyncClient(timeout=120) as http:
        began = time.monotonic()
        first = None
        async with http.stream(
            "POST",
            f"{llama}/v1/chat/completions",
            json={"model": "smollm2", "messages": messages, "max_tokens": 8, "stream": True},
        ) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: ") and '"content"' in line and first is None:
                    first = time.monotonic() - began
        assert first is not None
        return first * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer tokens and trials")
    parser.add_argument(
        "--part",
        choices=["all", "latency", "ttft"],
        default="all",
        help="run one part only (prints, does not write docs/benchmarks.md)",
    )
    parser.add_argument("--trials", type=int, help="time-to-first-token trials per thread")
    parser.add_argument(
        "--dump", help="write each case's per-token (sent, received) WebSocket times here (JSON)"
    )
    parser.add_argument(
        "--only", help="latency part: only these cases, e.g. 100/0,1000/0 (rate/window ms)"
    )
    args = parser.parse_args()
    seconds = 1 if args.quick else 3
    trials = args.trials or (5 if args.quick else 15)

    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env |= {
        "VAR_DIR": tempfile.mkdtemp(prefix="threadline-streaming-"),
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DATABASE_URL": pg_recreate("threadline_streaming"),
        "REDIS_URL": REDIS,
        "CELERY_BROKER_URL": REDIS,
        "LOG_LEVEL": "ERROR",
        "RUN_TIME_LIMIT_SECONDS": "600",
    }
    import redis

    redis.Redis.from_url(REDIS).flushdb()
    manage(env, "migrate", "--noinput")
    token = manage(env, "issue_token", "bench", "--create")
    rates = [100, 1000, 3000, "max"]
    counts = {100: 100 * seconds, 1000: 1000 * seconds, 3000: 3000 * seconds, "max": 6000}
    models = {rate: f"rate-{rate}-n{counts[rate]}" for rate in rates}
    creations = ";".join(
        f"AIModel.objects.create(id='mdl_{name.replace('-', '_')}', name='{name}',"
        f" provider='openai', provider_model='{name}', context_window=100000,"
        " max_output_tokens=100000, available_to_all=True)"
        for name in models.values()
    )
    manage(
        env,
        "shell",
        "-c",
        "from agents.models import AIModel;"
        + creations
        + ";AIModel.objects.create(id='mdl_llama', name='llama', provider='openai',"
        " provider_model='smollm2', context_window=2048, max_output_tokens=8,"
        " available_to_all=True)",
    )

    procs = Procs(env)
    results: dict[str, Any] = {}
    try:
        web_port, token_port, llama_port = free_port(), free_port(), free_port()
        base = f"http://127.0.0.1:{web_port}"
        procs.start(
            [
                str(BIN / "daphne"),
                "-b",
                "127.0.0.1",
                "-p",
                str(web_port),
                "chatproject.asgi:application",
            ]
        )
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
        wait_http(f"{base}/healthz")
        wait_http(f"http://127.0.0.1:{token_port}/v1/models")

        if args.part in ("all", "latency"):
            results["floor"] = asyncio.run(redis_floor(1000 * seconds, 1000))
            only = set(args.only.split(",")) if args.only else None
            for flush in (0, 50):
                if only and not any(case.endswith(f"/{flush}") for case in only):
                    continue
                worker = procs.worker(
                    STREAM_FLUSH_MS=str(flush), LLM_BASE_URL=f"http://127.0.0.1:{token_port}/v1"
                )
                for rate in rates:
                    if only and f"{rate}/{flush}" not in only:
                        continue
                    cpu_before = cpu_seconds(worker.pid)
                    run = asyncio.run(
                        one_reply(base, token, f"mdl_{models[rate].replace('-', '_')}")
                    )
                    run["cpu_s"] = cpu_seconds(worker.pid) - cpu_before
                    run["tokens"] = counts[rate]
                    results[f"{rate}/{flush}"] = run
                    print(
                        rate,
                        flush,
                        len(run["ws"]),
                        len(run["sse"]),
                        round(run["elapsed"], 2),
                        flush=True,
                    )
                procs.stop(worker)

        if args.part in ("all", "ttft"):
            # Part 2: time to first token with the bundled model behind llama_cpp.server.
            setup_django(env["DATABASE_URL"], env["VAR_DIR"])  # to read agents.context's prompt
            from agents.llm.local import bundled_model_path

            llama = f"http://127.0.0.1:{llama_port}"
            procs.start(
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
                ]
            )
            wait_http(f"{llama}/v1/models")
            worker = procs.worker(LLM_BASE_URL=f"{llama}/v1")
            big = manage(
                env,
                "shell",
                "-c",
                (
                    "from messaging.services import message_post, thread_create;"
                    "from threads.models import User; u = User.objects.get(username='bench');"
                    "t, _ = thread_create(creator=u, title='Long chat');"
                    "[message_post(thread=t, author=u, text=f'Note {i}: the meeting moved to room {i % 7}.')"
                    " for i in range(1000)];"
                    "print(t.pk)"
                ),
            ).splitlines()[-1]
            for label, thread_of in (("new thread", None), ("1,000-message thread", big)):
                ours, direct = [], []
                for _ in range(trials):
                    thread = (
                        thread_of
                        or httpx.post(
                            f"{base}/api/v1/threads/",
                            json={"title": "ttft"},
                            headers={"Authorization": f"Bearer {token}"},
                        ).json()["id"]
                    )
                    # llama.cpp reuses a cached prompt prefix: warm it with the direct request, then
                    # measure Threadline and the direct request on the same footing.
                    messages = asyncio.run(context_like_ours(base, token, thread))
                    asyncio.run(ttft_direct(llama, messages))
                    ours.append(asyncio.run(ttft_ours(base, token, thread, "mdl_llama")))
                    direct.append(asyncio.run(ttft_direct(llama, messages)))
                results[f"ttft/{label}"] = {"ours": ours, "direct": direct}
                print(label, round(pct(ours, 50), 1), round(pct(direct, 50), 1), flush=True)
            procs.stop(worker)
    finally:
        procs.stop_all()

    if args.dump:
        Path(args.dump).write_text(
            json.dumps({k: v["ws_times"] for k, v in results.items() if "ws_times" in v})
        )
    if args.part != "all":
        for key, value in results.items():
            if key.startswith("ttft/"):
                ours, direct = value["ours"], value["direct"]
                print(
                    f"{key}: direct p50 {pct(direct, 50):.1f}, ours p50 {pct(ours, 50):.1f}"
                    f" p99 {pct(ours, 99):.1f}, added p50 {pct(ours, 50) - pct(direct, 50):.1f}"
                )
            elif key != "floor":
                print(f"{key}: ws p50 {pct(value['ws'], 50):.2f} p99 {pct(value['ws'], 99):.2f}")
        if "floor" in results:
            print(f"floor p50 {pct(results['floor'], 50):.2f} p99 {pct(results['floor'], 99):.2f}")
        return

    floor = results["floor"]
    rows = [
        [
            "Redis PUBLISH → subscriber (floor)",
            "-",
            "-",
            pct(floor, 50),
            pct(floor, 99),
            "-",
            "-",
            "-",
        ]
    ]
    verdicts = []
    for flush in (0, 50):
        for rate in rates:
            r = results[f"{rate}/{flush}"]
            delivered = r["tokens"] / r["elapsed"]
            rows.append(
                [
                    f"{rate}/s" if rate != "max" else "as fast as it can",
                    "off" if flush == 0 else f"{flush} ms",
                    round(delivered),
                    pct(r["ws"], 50),
                    pct(r["ws"], 99),
                    pct(r["sse"], 50),
                    pct(r["sse"], 99),
                    r["cpu_s"] / r["tokens"] * 1000 * 1000,
                ]
            )
    off = results["1000/0"]
    on = results["1000/50"]
    verdicts.append(
        f"- 1,000 tokens/s, batching off: WebSocket p99 {pct(off['ws'], 99):.1f} ms = "
        f"{pct(off['ws'], 99) / pct(floor, 99):.1f}× the Redis floor's p99 (goal ≤ 4×)"
    )
    verdicts.append(
        f"- 1,000 tokens/s, 50 ms window: WebSocket p99 {pct(on['ws'], 99):.1f} ms "
        f"(goal ≤ window + 10 = 60 ms)"
    )
    best = max(results[f"max/{f}"]["tokens"] / results[f"max/{f}"]["elapsed"] for f in (0, 50))
    verdicts.append(f"- one worker sustained {best:,.0f} tokens/s end to end (goal ≥ 1,000)")
    cpu = results["1000/50"]["cpu_s"] / results["1000/50"]["tokens"] * 1000
    verdicts.append(
        f"- worker CPU per token at 1,000/s with batching: {cpu:.3f} ms (goal ≤ 0.25 ms)"
    )

    ttft_rows = []
    added: dict[str, float] = {}
    for label in ("new thread", "1,000-message thread"):
        r = results[f"ttft/{label}"]
        added[label] = pct(r["ours"], 50) - pct(r["direct"], 50)
        ttft_rows.append(
            [label, pct(r["direct"], 50), pct(r["ours"], 50), pct(r["ours"], 99), added[label]]
        )
    verdicts.append(
        f"- added time to first token: {added['new thread']:.1f} ms p50 in a new thread (goal ≤ 25), "
        f"{added['1,000-message thread']:.1f} ms in a 1,000-message thread"
    )

    body = "\n".join(
        [
            "## Streaming replies (`bench/streaming.py`)",
            "",
            "Tokens from a fixed-rate OpenAI-compatible load generator, through a real Celery worker "
            "(the `openai` provider), Redis and daphne, to one WebSocket and one SSE client. Latency "
            "is per token, from the moment the generator sent it to its arrival at the client, in "
            "milliseconds; CPU is the worker process's, in microseconds per token. "
            "Batching: STREAM_FLUSH_MS.",
            machine_line(),
            "",
            table(
                [
                    "token rate",
                    "batching",
                    "delivered tokens/s",
                    "WS p50",
                    "WS p99",
                    "SSE p50",
                    "SSE p99",
                    "worker CPU µs/token",
                ],
                rows,
            ),
            "",
            "Time to first token, bundled SmolLM2 behind `llama_cpp.server` (milliseconds): the "
            "same messages sent to the server directly, against a post to Threadline until the "
            "first delta reaches a WebSocket.",
            "",
            table(
                ["thread", "direct p50", "Threadline p50", "Threadline p99", "added p50"], ttft_rows
            ),
            "",
            *verdicts,
        ]
    )
    print(body)
    write_section("streaming", body)


if __name__ == "__main__":
    main()
