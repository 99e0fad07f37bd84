"""Fan-out: N WebSocket clients follow one thread; messages posted over REST must reach them all.

For each server variant and each N, the script starts the server, connects N clients (one asyncio
process, compression off), reads the server's resident memory before and after (memory per idle
connection), then posts BROADCASTS messages one after another and records, per message, when each
client received it. Reported: completion p50/p99 (post sent → last client has it), per-delivery
p99, deliveries per second, memory per connection.

Variants: Threadline under daphne and uvicorn on the channels-redis pub/sub and core layers; the
floor, a bare ASGI app writing the same frames to its sockets; the peer, stock Channels (a
consumer per socket in a group, `group_send`). All in the same run, on this machine.

    python bench/fanout.py [--clients 100,1000,10000] [--broadcasts 10] [--variants ...]
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import websockets

from bench.common import ROOT, machine_line, manage, pct, pg_recreate, table, write_section
from bench.startup import free_port, rss_mb

BIN = Path(sys.executable).parent
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
MARK = re.compile(r"bench-(\d+)-end")
# A frame about the size of a real chatMessageAdded event, for the baselines.
FILLER = "x" * 300


@dataclass(frozen=True)
class Variant:
    key: str
    name: str
    app: str
    server: str  # daphne | uvicorn
    layer: str  # pubsub | core | none
    threadline: bool


TL = "chatproject.asgi:application"
VARIANTS = {
    v.key: v
    for v in [
        Variant(
            "floor",
            "floor: bare ASGI (uvicorn)",
            "bench.fanout_apps:floor",
            "uvicorn",
            "none",
            False,
        ),
        Variant(
            "stock",
            "stock Channels (daphne, pubsub)",
            "bench.fanout_apps:stock",
            "daphne",
            "pubsub",
            False,
        ),
        Variant("daphne-pubsub", "Threadline (daphne, pubsub)", TL, "daphne", "pubsub", True),
        Variant("uvicorn-pubsub", "Threadline (uvicorn, pubsub)", TL, "uvicorn", "pubsub", True),
        Variant("daphne-core", "Threadline (daphne, core)", TL, "daphne", "core", True),
    ]
}


def server_command(variant: Variant, port: int) -> list[str]:
    if variant.server == "daphne":
        return [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(port), variant.app]
    return [
        str(BIN / "uvicorn"),
        variant.app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ws",
        "websockets",
        "--ws-per-message-deflate",
        "false",
        "--log-level",
        "warning",
        "--no-access-log",
        "--lifespan",
        "off",
    ]


def redis_flush() -> None:
    import redis

    redis.Redis.from_url(REDIS).flushdb()


class Clients:
    """N sockets in this process, noting when each sees each marked message."""

    def __init__(self) -> None:
        self.received: dict[int, list[float]] = {}
        self.sockets: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def connect(self, url: str, n: int, subscribe: dict[str, Any] | None) -> None:
        gate = asyncio.Semaphore(100)

        async def one() -> None:
            async with gate:
                ws = await websockets.connect(
                    url, compression=None, max_queue=None, open_timeout=60, ping_interval=None
                )
                if subscribe is not None:
                    await ws.send(json.dumps(subscribe))
                    while True:
                        frame = json.loads(await ws.recv())
                        if frame.get("type") == "subscribed":
                            break
                        if frame.get("type") == "error":
                            raise RuntimeError(frame)
                self.sockets.append(ws)
                self.tasks.append(asyncio.create_task(self._read(ws)))

        await asyncio.gather(*(one() for _ in range(n)))

    async def _read(self, ws: Any) -> None:
        try:
            async for text in ws:
                found = MARK.search(text)
                if found:
                    self.received.setdefault(int(found.group(1)), []).append(time.monotonic())
        except websockets.ConnectionClosed:
            pass

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in self.sockets), return_exceptions=True)


async def measure(
    variant: Variant, n: int, broadcasts: int, env: dict[str, str], seed: dict[str, str]
) -> dict[str, Any]:
    port = free_port()
    if variant.layer != "none":
        redis_flush()
    proc = subprocess.Popen(
        server_command(variant, port),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            for _ in range(300):
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            headers = {"Authorization": f"Bearer {seed['token']}"} if variant.threadline else {}
            if variant.threadline:
                url = f"ws://127.0.0.1:{port}/ws/v1/events/?token={seed['token']}"
                subscribe: dict[str, Any] | None = {
                    "action": "subscribe",
                    "threadId": seed["thread"],
                }
                post_url = f"/api/v1/threads/{seed['thread']}/messages/"
            else:
                url, subscribe, post_url = f"ws://127.0.0.1:{port}/ws/", None, "/broadcast"

            async def post(k: int) -> None:
                text = f"bench-{k}-end"
                if variant.threadline:
                    response = await http.post(post_url, json={"text": text}, headers=headers)
                else:
                    frame = json.dumps(
                        {"type": "chatMessageAdded", "data": {"text": text, "pad": FILLER}}
                    )
                    response = await http.post(post_url, content=frame)
                assert response.status_code in (200, 201), response.text

            await post(-1)  # warm the server's code paths before measuring memory
            await asyncio.sleep(1)
            before = rss_mb(proc.pid)
            clients = Clients()
            began = time.monotonic()
            await clients.connect(url, n, subscribe)
            connect_s = time.monotonic() - began
            await asyncio.sleep(2)
            after = rss_mb(proc.pid)

            completions: list[float] = []
            deliveries: list[float] = []
            for k in range(broadcasts):
                sent = time.monotonic()
                await post(k)
                deadline = sent + 60
                while len(clients.received.get(k, ())) < n and time.monotonic() < deadline:
                    await asyncio.sleep(0.002)
                got = clients.received.get(k, [])
                if len(got) < n:
                    raise RuntimeError(f"{variant.name}: only {len(got)}/{n} got message {k}")
                completions.append((max(got) - sent) * 1000)
                deliveries.extend((t - sent) * 1000 for t in got)
                await asyncio.sleep(0.1)
            await clients.close()
        return {
            "variant": variant.name,
            "n": n,
            "connect_s": connect_s,
            "kib_per_conn": (after - before) * 1024 / n,
            "completion_p50": pct(completions, 50),
            "completion_p99": pct(completions, 99),
            "delivery_p99": pct(deliveries, 99),
            "deliveries_per_s": n / (statistics.median(completions) / 1000),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def seed_threadline(env: dict[str, str]) -> dict[str, str]:
    manage(env, "migrate", "--noinput")
    token = manage(env, "issue_token", "fanout", "--create")
    thread = manage(
        env,
        "shell",
        "-c",
        "from messaging.services import thread_create; from threads.models import User;"
        "print(thread_create(creator=User.objects.get(username='fanout'), title='Fan-out')[0].pk)",
    ).splitlines()[-1]
    return {"token": token, "thread": thread}


def svg_plot(results: list[dict[str, Any]], path: Path) -> None:
    """Completion p99 against N, log-log, one line per variant: a small hand-written SVG."""
    import math

    width, height, left, bottom, top, right = 640, 360, 60, 40, 20, 200
    ns = sorted({r["n"] for r in results})
    ys = [r["completion_p99"] for r in results]
    y_lo, y_hi = math.log10(max(min(ys), 0.1)), math.log10(max(ys) * 1.2)
    x_lo, x_hi = math.log10(ns[0]), math.log10(ns[-1]) if len(ns) > 1 else math.log10(ns[0]) + 1

    def x(n: float) -> float:
        return left + (math.log10(n) - x_lo) / max(x_hi - x_lo, 1e-9) * (width - left - right)

    def y(v: float) -> float:
        return (
            height
            - bottom
            - (math.log10(max(v, 0.1)) - y_lo) / max(y_hi - y_lo, 1e-9) * (height - bottom - top)
        )

    colours = ["#555", "#c0392b", "#2471a3", "#27ae60", "#8e44ad", "#d68910"]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#000"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#000"/>',
        f'<text x="{(width - right) / 2}" y="{height - 8}">clients (log)</text>',
        f'<text x="6" y="{top + 4}">p99 ms (log)</text>',
    ]
    for n in ns:
        parts.append(f'<text x="{x(n) - 12}" y="{height - bottom + 14}">{n:,}</text>')
    for exp in range(math.floor(y_lo), math.ceil(y_hi) + 1):
        value = 10**exp
        if y_lo <= exp <= y_hi:
            parts.append(f'<text x="8" y="{y(value) + 4}">{value:g}</text>')
            parts.append(
                f'<line x1="{left}" y1="{y(value)}" x2="{width - right}" y2="{y(value)}" stroke="#eee"/>'
            )
    names = list(dict.fromkeys(r["variant"] for r in results))
    for i, name in enumerate(names):
        colour = colours[i % len(colours)]
        points = sorted((r["n"], r["completion_p99"]) for r in results if r["variant"] == name)
        coords = " ".join(f"{x(n):.1f},{y(v):.1f}" for n, v in points)
        parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>'
        )
        for n, v in points:
            parts.append(f'<circle cx="{x(n):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>')
        parts.append(
            f'<text x="{width - right + 10}" y="{top + 14 * (i + 1)}" fill="{colour}">{name}</text>'
        )
    parts.append("</svg>")
    path.write_text("\n".join(parts))


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env |= {
        "VAR_DIR": tempfile.mkdtemp(prefix="threadline-fanout-"),
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "DATABASE_URL": pg_recreate("threadline_fanout"),
        "REDIS_URL": REDIS,
        "LOG_LEVEL": "ERROR",
    }
    seed = seed_threadline(env)
    results = []
    for name in args.variants:
        variant = VARIANTS[name]
        variant_env = env | {
            "CHANNEL_LAYER": variant.layer if variant.layer != "none" else "pubsub"
        }
        for n in args.clients:
            result = await measure(variant, n, args.broadcasts, variant_env, seed)
            print(json.dumps(result), flush=True)
            results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", default="100,1000,10000")
    parser.add_argument("--broadcasts", type=int, default=10)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=", ".join(VARIANTS))
    args = parser.parse_args()
    args.clients = [int(n) for n in args.clients.split(",")]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    results = asyncio.run(run(args))

    rows = [
        [
            r["variant"],
            r["n"],
            r["completion_p50"],
            r["completion_p99"],
            r["delivery_p99"],
            round(r["deliveries_per_s"]),
            r["kib_per_conn"],
            r["connect_s"],
        ]
        for r in results
    ]
    by = {(r["variant"], r["n"]): r for r in results}
    verdicts = []
    floor, stock = "floor: bare ASGI (uvicorn)", "stock Channels (daphne, pubsub)"
    for variant in VARIANTS.values():
        if not variant.threadline:
            continue
        name = variant.name
        ours = by.get((name, 1000))
        if ours and (floor, 1000) in by:
            ratio = ours["completion_p99"] / by[(floor, 1000)]["completion_p99"]
            verdicts.append(f"- {name}, 1,000 clients: p99 {ratio:.1f}× the floor (goal ≤ 5×)")
        if ours and (stock, 1000) in by:
            speed = by[(stock, 1000)]["completion_p99"] / ours["completion_p99"]
            verdicts.append(
                f"- {name}, 1,000 clients: {speed:.1f}× faster than stock Channels at p99 (goal ≥ 3×)"
            )
        big = by.get((name, 10000))
        if big:
            verdicts.append(
                f"- {name}, 10,000 clients: {big['kib_per_conn']:.0f} KiB per idle connection "
                f"(goal ≤ 40), broadcast completes in {big['completion_p99'] / 1000:.2f} s p99 (goal ≤ 5 s)"
            )
    plot = ROOT / "docs" / "fanout.svg"
    svg_plot(results, plot)
    body = "\n".join(
        [
            "## Fan-out to WebSocket clients (`bench/fanout.py`)",
            "",
            "N clients follow one thread; each message is posted over REST (Threadline) or to "
            "`POST /broadcast` (baselines) and timed from the moment the post is sent until the "
            f"last client has it. {args.broadcasts} messages per row; clients run in one asyncio "
            "process on the same 2 cores as the server, compression off, Redis on 127.0.0.1, "
            "PostgreSQL for Threadline. Memory is the server's resident growth per connected client.",
            machine_line(),
            "",
            table(
                [
                    "server",
                    "clients",
                    "completion p50 ms",
                    "completion p99 ms",
                    "delivery p99 ms",
                    "deliveries/s",
                    "KiB/conn",
                    "connect s",
                ],
                rows,
            ),
            "",
            "![completion p99 against clients](fanout.svg)",
            "",
            *verdicts,
        ]
    )
    print(body)
    write_section("fanout", body)


if __name__ == "__main__":
    main()
