"""The cost of one ordinary reply: time to first token and CPU, against the model server alone.

One run, real processes on 127.0.0.1: `llama_cpp.server` with the bundled SmolLM2 model
(`--n_threads 1 --n_ctx 2048`), and Threadline in the production profile (one daphne, one Celery
worker with the threads pool and concurrency 2, PostgreSQL, Redis) with that server as an
`openai`-provider catalog entry (max_output_tokens 64), TITLE_GENERATION=0 and
SUMMARY_GENERATION=0 so every reply is one model call, RATE_LIMITS=0. Three paths, alternating,
in a new thread and in a 1,000-message thread:

- direct: the `openai` package streaming the same messages from the server (max_tokens 64);
- dashboard: `POST /api/v1/chat/messages`, the reply read from its own SSE response (a new
  session each time in the new-thread case);
- native: `POST /api/v1/threads/{id}/messages/` with `"reply": true`, the first delta read on
  a WebSocket subscribed beforehand.

Before every measured request the same messages go to the model server once, unmeasured, with
max_tokens 1, so each measured request meets the server's prompt cache in the same state (the
server's log says how many prompt tokens each measured request evaluated: checked and printed).
CPU is read from /proc before and after each request (after a short settle): daphne; the worker
and its children; PostgreSQL's backends connected to this database, and every `postgres`
process (with the postmaster's reaped children); redis-server. The direct path is read the same
way: what the servers burn while Threadline is not involved is the noise floor of this shared
machine, and is subtracted.

    python bench/reply_cost.py [--trials 30] [--write] [--trace]

`--trace` also follows one reply per Threadline path: its Redis commands (MONITOR, this Redis
db only) and its SQL statements (log_statement on this scratch database only, read from the
server's log), from the POST to the last event.

BENCH_REDIS_URL (default redis://127.0.0.1:6379/7) is flushed; BENCH_PG_NAME (default
threadline_bench_cost) is dropped and made again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
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
from bench.streaming import BIN, CLK_TCK, Procs, wait_http

REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
PG_NAME = os.environ.get("BENCH_PG_NAME", "threadline_bench_cost")
# A question whose answer runs to the 64-token limit, so every reply is a 64-token reply.
QUESTION = "Write a long story about the team's week at the office."
MAX_TOKENS = 64
SETTLE_S = 0.3  # after the last event: the worker's commit and ack, daphne's close
PATHS = ("direct", "dashboard", "native")
EVALUATED = re.compile(rb"prompt eval time = +[\d.]+ ms / +(\d+) tokens")


# --- CPU from /proc --------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _all_pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _task_seconds(pid: int) -> float:
    """On-CPU seconds of every live thread of `pid`, in nanoseconds from the scheduler
    (/proc/PID/task/*/schedstat): /proc's utime and stime count whole 10 ms ticks, too coarse
    for one reply."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0.0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


def tree_cpu(root: int) -> float:
    """On-CPU seconds of `root` and its live descendants."""
    parents: dict[int, int] = {}
    for pid in _all_pids():
        fields = _stat(pid)
        if fields:
            parents[pid] = int(fields[1])
    members = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in members and pid not in members:
                members.add(pid)
                grew = True
    return sum(_task_seconds(pid) for pid in members)


def services_cpu(db_name: str) -> dict[str, float]:
    """On-CPU seconds: our database's backends and redis-server (scheduler nanoseconds), and
    all of PostgreSQL with the postmaster's reaped backends (ticks: what has exited is only
    known that way)."""
    ours = redis = 0.0
    everything = 0
    for pid in _all_pids():
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if comm not in ("postgres", "redis-server"):
            continue
        fields = _stat(pid)
        if not fields:
            continue
        if comm == "redis-server":
            redis += _task_seconds(pid)
            continue
        everything += int(fields[11]) + int(fields[12])
        if int(fields[1]) == 1:  # the postmaster: its reaped backends count too
            everything += int(fields[13]) + int(fields[14])
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if f" {db_name} ".encode() in cmdline + b" ":
            ours += _task_seconds(pid)
    return {"pg_ours": ours, "pg_all": everything / CLK_TCK, "redis": redis}


class Meter:
    def __init__(self, daphne: int, worker: int, db_name: str) -> None:
        self.daphne, self.worker, self.db_name = daphne, worker, db_name

    def read(self) -> dict[str, float]:
        return {
            "daphne": tree_cpu(self.daphne),
            "worker": tree_cpu(self.worker),
            **services_cpu(self.db_name),
        }


# --- the three paths -------------------------------------------------------------------------


class Bench:
    def __init__(self, base: str, llama: str, token: str, model_id: str, log: Path) -> None:
        import openai

        self.base, self.llama, self.token, self.model_id, self.log = (
            base,
            llama,
            token,
            model_id,
            log,
        )
        self.ws_base = base.replace("http", "ws")
        self.http = httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120
        )
        self.direct = openai.AsyncOpenAI(base_url=f"{llama}/v1", api_key="none", max_retries=0)

    async def close(self) -> None:
        await self.http.aclose()
        await self.direct.close()

    async def messages_for(self, thread: str | None) -> list[dict[str, str]]:
        """What agents.context sends for QUESTION in `thread`: the system prompt, the last
        MAX_CHAT_HISTORY_CONTEXT - 1 turns with text, the question (as bench/streaming.py's
        context_like_ours, with this bench's question)."""
        from django.conf import settings

        from agents.context import BASE_PROMPT

        turns: list[dict[str, str]] = []
        if thread is not None:
            limit = settings.MAX_CHAT_HISTORY_CONTEXT - 1
            page = (await self.http.get(f"/api/v1/threads/{thread}/messages/?limit={limit}")).json()
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
            {"role": "user", "content": f"bench: {QUESTION}"},
        ]

    async def warm(self, messages: list[dict[str, str]]) -> None:
        stream = await self.direct.chat.completions.create(
            model="smollm2",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=1,
            stream=True,
        )
        async for _ in stream:  # type: ignore[union-attr]
            pass

    async def run_direct(self, messages: list[dict[str, str]]) -> tuple[float, int]:
        began = time.monotonic()
        stream = await self.direct.chat.completions.create(
            model="smollm2",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=MAX_TOKENS,
            stream=True,
        )
        first, tokens = None, 0
        async for chunk in stream:  # type: ignore[union-attr]
            if chunk.choices and chunk.choices[0].delta.content:
                tokens += 1
                if first is None:
                    first = time.monotonic() - began
        assert first is not None
        return first * 1000, tokens

    async def run_dashboard(self, thread: str | None) -> tuple[float, int]:
        body: dict[str, Any] = {"message": QUESTION, "modelId": self.model_id}
        if thread:
            body["sessionId"] = thread
        began = time.monotonic()
        first, tokens, event = None, 0, ""
        async with self.http.stream("POST", "/api/v1/chat/messages", json=body) as response:
            assert response.status_code == 200, await response.aread()
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    if event == "delta" and first is None:
                        first = time.monotonic() - began
                    elif event == "done":
                        done = json.loads(line[6:])
                        assert done["status"] == "complete", done
                        tokens = _completion_tokens(done.get("usage"))
                    elif event == "error":
                        raise RuntimeError(line)
        assert first is not None
        return first * 1000, tokens

    async def socket(self, thread: str) -> Any:
        ws = await websockets.connect(f"{self.ws_base}/ws/v1/events/?token={self.token}")
        await ws.send(json.dumps({"action": "subscribe", "threadId": thread}))
        await ws.recv()
        return ws

    async def run_native(self, thread: str, ws: Any) -> tuple[float, int]:
        began = time.monotonic()
        posted = await self.http.post(
            f"/api/v1/threads/{thread}/messages/",
            json={"text": QUESTION, "reply": True, "modelId": self.model_id},
        )
        assert posted.status_code == 201, posted.text
        first, tokens = None, 0
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if event["type"] == "chatMessageDelta" and first is None:
                first = time.monotonic() - began
            if event["type"] == "chatMessageCompleted":
                assert event["data"]["message"]["status"] == "complete", event
                tokens = _completion_tokens(event["data"].get("usage"))
                break
        assert first is not None
        return first * 1000, tokens

    async def new_thread(self) -> str:
        answer = await self.http.post("/api/v1/threads/", json={"title": "bench"})
        answer.raise_for_status()
        return str(answer.json()["id"])

    def log_offset(self) -> int:
        return self.log.stat().st_size

    def evaluated(self, offset: int) -> int | None:
        """Prompt tokens the server evaluated (not found in its cache) since `offset`."""
        with self.log.open("rb") as handle:
            handle.seek(offset)
            found = EVALUATED.findall(handle.read())
        return int(found[0]) if found else None

    async def one(self, path: str, big: str | None, meter: Meter) -> dict[str, Any]:
        """One measured request on `path`; the prompt cache warmed with its messages first."""
        thread = big
        ws = None
        if path == "native":
            thread = thread or await self.new_thread()
            ws = await self.socket(thread)
        messages = await self.messages_for(big if path == "dashboard" else thread)
        await self.warm(messages)
        offset = self.log_offset()
        before = meter.read()
        if path == "direct":
            ttft, tokens = await self.run_direct(messages)
        elif path == "dashboard":
            ttft, tokens = await self.run_dashboard(big)
        else:
            assert thread is not None and ws is not None
            ttft, tokens = await self.run_native(thread, ws)
        await asyncio.sleep(SETTLE_S)
        after = meter.read()
        if ws is not None:
            await ws.close()
        await asyncio.sleep(0.05)  # the log line is written after the stream ends
        return {
            "ttft": ttft,
            "tokens": tokens,
            "cpu": {k: after[k] - before[k] for k in before},
            "evaluated": self.evaluated(offset),
        }


def _completion_tokens(usage: Any) -> int:
    if not isinstance(usage, dict):
        return 0
    for key in ("completionTokens", "completion_tokens", "output"):
        if isinstance(usage.get(key), int):
            return int(usage[key])
    return 0


async def measure(bench: Bench, big: str, trials: int, meter: Meter) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for _ in range(2):  # warm-up: imports, connections, the provider's client
        for path in PATHS:
            await bench.one(path, None, meter)
            await bench.one(path, big, meter)
    for label, thread in (("new", None), ("1000", big)):
        samples: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
        for trial in range(trials):
            # Rotate the order so no path always follows the same one.
            order = PATHS[trial % 3 :] + PATHS[: trial % 3]
            for path in order:
                samples[path].append(await bench.one(path, thread, meter))
        results[label] = samples
        print(
            label,
            {p: round(pct([s["ttft"] for s in samples[p]], 50), 1) for p in PATHS},
            flush=True,
        )
    return results


# --- one reply followed: Redis commands and SQL statements -----------------------------------


async def trace(bench: Bench, log_path: Path | None, db_name: str, redis_db: int) -> dict[str, Any]:
    """The Redis commands (MONITOR, our db only) and SQL statements (our database's log lines)
    of one reply on each Threadline path, from the POST to the last event."""
    out: dict[str, Any] = {}
    for kind in ("dashboard", "native"):
        for attempt in range(2):  # the first of each warms the fresh processes' connections
            thread = await bench.new_thread()
            ws = await bench.socket(thread) if kind == "native" else None
            monitor = await asyncio.create_subprocess_exec(
                "redis-cli",
                "-u",
                REDIS.rsplit("/", 1)[0],
                "MONITOR",
                stdout=asyncio.subprocess.PIPE,
            )
            await asyncio.sleep(0.3)
            pg_offset = _size(log_path)
            if kind == "dashboard":
                await bench.run_dashboard(thread)
            else:
                assert ws is not None
                await bench.run_native(thread, ws)
            await asyncio.sleep(SETTLE_S)
            monitor.terminate()
            raw, _ = await monitor.communicate()
            if ws is not None:
                await ws.close()
            if attempt == 0:
                continue
            commands: Counter[str] = Counter()
            for line in raw.decode(errors="replace").splitlines():
                match = re.match(r"[\d.]+ \[(\d+) [^\]]+\] \"(\w+)\"", line)
                if match and int(match.group(1)) == redis_db:
                    commands[match.group(2).upper()] += 1
            statements: Counter[str] = Counter()
            if log_path is not None:
                with log_path.open("rb") as handle:
                    handle.seek(pg_offset)
                    text = handle.read().decode(errors="replace")
                for line in text.splitlines():
                    found = re.search(r"statement: (\w+)", line)
                    if found and db_name in line:
                        statements[found.group(1).upper()] += 1
            out[kind] = {"redis": commands, "sql": statements}
            print(kind, dict(commands), dict(statements), flush=True)
    return out


def _size(path: Path | None) -> int:
    return path.stat().st_size if path else 0


def pg_log_statements(db_name: str, on: bool) -> Path | None:
    """Turn statement logging on or off for our scratch database only; the server's log file.
    Connections made after this see the setting."""
    import psycopg

    from bench.common import PG_ADMIN_URL

    with psycopg.connect(
        PG_ADMIN_URL.replace("postgres://", "postgresql://"), autocommit=True
    ) as conn:
        if on:
            conn.execute(f"ALTER DATABASE \"{db_name}\" SET log_statement = 'all'")
        else:
            conn.execute(f'ALTER DATABASE "{db_name}" RESET log_statement')
        row = conn.execute("SELECT pg_current_logfile()").fetchone()
        data = conn.execute("SHOW data_directory").fetchone()
    path = Path(str(row[0])) if row and row[0] else None
    if path is not None and not path.is_absolute() and data:
        path = Path(str(data[0])) / path
    if path is None or not path.exists():
        candidates = sorted(Path("/var/log/postgresql").glob("postgresql-*.log"))
        path = candidates[-1] if candidates else None
    return path


# --- the report ------------------------------------------------------------------------------


def _per_reply_ms(samples: list[dict[str, Any]], key: str) -> float:
    return statistics.fmean(s["cpu"][key] for s in samples) * 1000


def report(results: dict[str, Any], trials: int, load: str, traced: dict[str, Any] | None) -> str:
    rows: list[list[object]] = []
    verdicts: list[str] = []
    added_p50: dict[tuple[str, str], float] = {}
    labels = {"new": "new thread", "1000": "1,000-message thread"}
    for label in ("new", "1000"):
        samples = results[label]
        direct = samples["direct"]
        d50 = pct([s["ttft"] for s in direct], 50)
        floor = {k: _per_reply_ms(direct, k) for k in direct[0]["cpu"]}
        for path in PATHS:
            ttfts = [s["ttft"] for s in samples[path]]
            tokens = statistics.fmean(s["tokens"] for s in samples[path]) or float("nan")
            evaluated = [s["evaluated"] for s in samples[path] if s["evaluated"] is not None]
            if path == "direct":
                rows.append(
                    [
                        labels[label],
                        path,
                        pct(ttfts, 50),
                        pct(ttfts, 99),
                        "-",
                        f"{tokens:.0f}",
                        f"{statistics.median(evaluated):.0f}" if evaluated else "?",
                        f"({floor['daphne'] + floor['worker']:.1f})",
                        "-",
                        f"({floor['pg_ours']:.1f} / {floor['pg_all']:.1f})",
                        f"({floor['redis']:.1f})",
                    ]
                )
                continue
            cost = {k: _per_reply_ms(samples[path], k) - floor[k] for k in floor}
            app = cost["daphne"] + cost["worker"]
            added = pct(ttfts, 50) - d50
            added_p50[(label, path)] = added
            rows.append(
                [
                    labels[label],
                    path,
                    pct(ttfts, 50),
                    pct(ttfts, 99),
                    added,
                    f"{tokens:.0f}",
                    f"{statistics.median(evaluated):.0f}" if evaluated else "?",
                    f"{app:.1f} ({cost['daphne']:.1f} + {cost['worker']:.1f})",
                    app / tokens,
                    f"{cost['pg_ours']:.1f} / {cost['pg_all']:.1f}",
                    cost["redis"],
                ]
            )
            if label == "new":
                verdicts.append(
                    f"- {path}, new thread: added {added:.1f} ms p50 (goal ≤ 30): "
                    f"{'met' if added <= 30 else 'NOT met'}; daphne + worker {app:.1f} ms per "
                    f"reply (goal ≤ 50): {'met' if app <= 50 else 'NOT met'}; PostgreSQL (our "
                    f"backends) + Redis {cost['pg_ours'] + cost['redis']:.1f} ms (goal ≤ 8): "
                    f"{'met' if cost['pg_ours'] + cost['redis'] <= 8 else 'NOT met'}"
                )
    for path in ("dashboard", "native"):
        new, deep = added_p50[("new", path)], added_p50[("1000", path)]
        verdicts.append(
            f"- {path}, 1,000-message thread: added {deep:.1f} ms against {new:.1f} "
            f"({(deep / new - 1) * 100 if new > 0 else float('nan'):+.0f}%; goal ≤ +10%)"
        )
    headers = [
        "thread",
        "path",
        "TTFT p50",
        "TTFT p99",
        "added p50",
        "tokens",
        "prompt tokens evaluated",
        "daphne + worker CPU ms/reply",
        "per token",
        "PostgreSQL ms/reply (ours / all)",
        "Redis ms/reply",
    ]
    lines = [
        "## The cost of one reply (`bench/reply_cost.py`)",
        "",
        "The bundled SmolLM2 behind `llama_cpp.server` (`--n_threads 1 --n_ctx 2048`); Threadline "
        "in the production profile (one daphne, one Celery worker with the threads pool and "
        "concurrency 2, PostgreSQL, Redis), the server as an `openai`-provider catalog entry with "
        f"max_output_tokens {MAX_TOKENS}, TITLE_GENERATION=0, SUMMARY_GENERATION=0, "
        f"RATE_LIMITS=0. {trials} requests per path and thread, the three paths alternating (the "
        "order rotated each round): **direct** (the `openai` package streaming the same "
        "messages from the server), **dashboard** (`POST /api/v1/chat/messages`, its own SSE "
        "response; a new session each time in the new-thread rows) and **native** "
        '(`POST /api/v1/threads/{id}/messages/` with `"reply": true`, the first delta on a '
        "WebSocket subscribed before). Before each measured request its messages went to the "
        "server once with max_tokens 1, so every path meets the prompt cache alike ('prompt "
        "tokens evaluated': the median the server's log reports per measured request). TTFT is "
        "the client's, in milliseconds. CPU is read from /proc before each request and "
        f"{SETTLE_S} s after its last event: daphne, the worker and its children, PostgreSQL's "
        "backends of this database ('ours') and every postgres process ('all', other users of "
        "this shared server included), redis-server (shared too). The direct rows show, in "
        "brackets, what those processes burnt while Threadline had nothing to do (the machine's "
        "noise); the Threadline rows are that floor subtracted. Per token: daphne + worker over "
        "the reply's completion tokens.",
        machine_line() + f" Load average at the start: {load}.",
        "",
        table(headers, rows),
        "",
        *verdicts,
    ]
    if traced:
        lines += ["", "One reply followed from the POST to the last event:", ""]
        trace_rows = []
        for kind, found in traced.items():
            trace_rows.append(
                [
                    kind,
                    sum(found["redis"].values()),
                    ", ".join(f"{k} {v}" for k, v in found["redis"].most_common()),
                    sum(found["sql"].values()),
                    ", ".join(f"{k} {v}" for k, v in found["sql"].most_common()),
                ]
            )
        lines.append(
            table(["path", "Redis commands", "by command", "SQL statements", "by verb"], trace_rows)
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--trace", action="store_true", help="count one reply's Redis and SQL")
    args = parser.parse_args()
    load = "{:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())
    print("load average", load, flush=True)

    import redis

    redis.Redis.from_url(REDIS).flushdb()
    db_url = pg_recreate(PG_NAME)
    db_name = db_url.rsplit("/", 1)[1]
    var_dir = tempfile.mkdtemp(prefix="threadline-reply-cost-")
    llama_port, web_port = free_port(), free_port()
    llama = f"http://127.0.0.1:{llama_port}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
    }
    env |= {
        "VAR_DIR": var_dir,
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DATABASE_URL": db_url,
        "REDIS_URL": REDIS,
        "CELERY_BROKER_URL": REDIS,
        "LOG_LEVEL": "ERROR",
        "LLM_BASE_URL": f"{llama}/v1",
        "TITLE_GENERATION": "0",
        "SUMMARY_GENERATION": "0",
        "RATE_LIMITS": "0",
    }
    manage(env, "migrate", "--noinput")
    token = manage(env, "issue_token", "bench", "--create")
    manage(
        env,
        "shell",
        "-c",
        "from agents.models import AIModel; AIModel.objects.create(id='mdl_llama',"
        " name='llama', provider='openai', provider_model='smollm2', context_window=2048,"
        f" max_output_tokens={MAX_TOKENS}, available_to_all=True)",
    )
    big = manage(
        env,
        "shell",
        "-c",
        (
            "from messaging.services import message_post, thread_create;"
            "from threads.models import User; u = User.objects.get(username='bench');"
            "t, _ = thread_create(creator=u, title='Long chat');"
            "[message_post(thread=t, author=u, text=f'Note {i}: the meeting moved to room"
            " {i % 7}.') for i in range(1000)];"
            "print(t.pk)"
        ),
    ).splitlines()[-1]
    setup_django(db_url, var_dir)  # agents.context's prompt, read by the direct path

    log = Path(var_dir) / "llama.log"
    procs = Procs(env)
    results: dict[str, Any] = {}
    traced = None
    try:
        with log.open("wb") as handle:
            procs.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "llama_cpp.server",
                        "--model",
                        str(_model_path()),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(llama_port),
                        "--n_threads",
                        "1",
                        "--n_ctx",
                        "2048",
                    ],
                    cwd=ROOT,
                    env=env | {"PYTHONUNBUFFERED": "1"},  # its log is read after each request
                    stdout=handle,
                    stderr=subprocess.STDOUT,
                )
            )
        daphne = procs.start(
            [
                str(BIN / "daphne"),
                "-b",
                "127.0.0.1",
                "-p",
                str(web_port),
                "chatproject.asgi:application",
            ]
        )
        wait_http(f"{llama}/v1/models")
        wait_http(f"http://127.0.0.1:{web_port}/healthz")
        worker = procs.worker()
        meter = Meter(daphne.pid, worker.pid, db_name)

        async def go() -> None:
            nonlocal traced
            bench = Bench(f"http://127.0.0.1:{web_port}", llama, token, "mdl_llama", log)
            try:
                results.update(await measure(bench, big, args.trials, meter))
            finally:
                await bench.close()

        asyncio.run(go())
        if args.trace:
            # Fresh daphne and worker, so their pooled connections see log_statement.
            log_path = pg_log_statements(db_name, True)
            try:
                procs.stop(daphne)
                procs.stop(worker)
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
                wait_http(f"http://127.0.0.1:{web_port}/healthz")
                procs.worker()

                async def follow() -> None:
                    nonlocal traced
                    bench = Bench(f"http://127.0.0.1:{web_port}", llama, token, "mdl_llama", log)
                    try:
                        traced = await trace(bench, log_path, db_name, int(REDIS.rsplit("/", 1)[1]))
                    finally:
                        await bench.close()

                asyncio.run(follow())
            finally:
                pg_log_statements(db_name, False)
    finally:
        procs.stop_all()

    body = report(results, args.trials, load, traced)
    print(body)
    print("load average at the end", "{:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg()))
    if args.write:
        write_section("reply_cost", body)


def _model_path() -> Path:
    from agents.llm.local import bundled_model_path

    return Path(bundled_model_path())


if __name__ == "__main__":
    main()
