"""What the rate limiter adds to an API request: a message POST (the per-address and the per-user
post counts) and a cheap GET (/api/v1/me/, the per-address count only), each with RATE_LIMITS
on (rates too high to refuse) and off, in the same run, alternating blocks so drift hits both.
Through Django's ASGI handler (AsyncClient), the path daphne serves. Two profiles, each in its
own process: embedded (LocMem cache, SQLite) and production (Redis cache, PostgreSQL).

Also the limiter's own calls timed alone (address_take + user_take, as a POST makes them).

    python bench/limits.py [--requests 2000] [--profile locmem|redis|both]

Redis: BENCH_REDIS_URL (default redis://127.0.0.1:6379/11); PostgreSQL: bench.common's server,
database tl_rate (BENCH_PG_DB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_line, pg_recreate, setup_django, summary, table, write_section

BLOCK = 50
GOAL_P50_MS = 0.3
GOAL_SHARE = 0.05
# Written from profiling the same set-up (not recomputed by each run): what the table's Redis
# figures are made of.
NOTES = [
    "",
    "Where the Redis figures go (profiled in the same set-up, not in this table): a count is one Redis round trip (`chatproject/ratecache.py`), about 0.1 ms alone on an idle loop; inside a request on this loaded machine it took 0.25–0.4 ms, mostly redis-py's own Python per command (no hiredis parser is installed). The address count adds a hop to a worker thread (so that a network wait never blocks the event loop), which cost 0.4–0.7 ms here; counting on the loop instead measured about 0 ms added to the GET in a trial run, at the price of blocking every socket and request of the process while Redis answers (or stalls). Kept off the loop.",
]


def run_profile(profile: str, requests: int) -> dict[str, Any]:
    var_dir = tempfile.mkdtemp(prefix="threadline-bench-")
    os.environ["DJANGO_SETTINGS_MODULE"] = "chatproject.settings"
    os.environ["RATE_LIMITS"] = "1"
    for name in ("POSTS", "IP_REQUESTS"):  # counted, never reached
        os.environ[f"RATE_LIMIT_{name}"] = "100000000/d"
    os.environ.pop("REDIS_URL", None)
    url = None
    if profile == "redis":
        os.environ["REDIS_URL"] = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
        url = pg_recreate(os.environ.get("BENCH_PG_DB", "tl_rate"))
    # The embedded worker is not needed: no post here asks for a reply.
    os.environ["CELERY_BROKER_URL"] = "memory://"
    setup_django(url, var_dir)
    from django.conf import settings
    from django.core.management import call_command
    from django.test import AsyncClient

    from messaging.services import thread_create
    from threads import rates, services

    call_command("migrate", verbosity=0)
    user = services.user_create(username="bench")
    thread, _ = thread_create(creator=user, title="Limits")
    _, token = services.token_issue(user=user)
    client = AsyncClient()
    auth = {"Authorization": f"Bearer {token}"}  # per request: AsyncClient(headers=) is lost
    body = json.dumps({"text": "A message of ordinary length, about as long as people write."})
    backend = settings.CACHES["rates"]["BACKEND"].rsplit(".", 1)[-1]

    async def post() -> None:
        response = await client.post(
            f"/api/v1/threads/{thread.pk}/messages/",
            body,
            content_type="application/json",
            headers=auth,
        )
        assert response.status_code == 201, response.content

    async def get() -> None:
        response = await client.get("/api/v1/me/", headers=auth)
        assert response.status_code == 200, response.content

    async def measure() -> dict[str, list[float]]:
        cases = [
            (f"{name} {state}", fn, state == "on")
            for name, fn in (("POST", post), ("GET", get))
            for state in ("on", "off")
        ]
        samples: dict[str, list[float]] = {label: [] for label, _, _ in cases}
        for _, fn, on in cases:  # warm every path
            settings.RATE_LIMITS = on
            for _ in range(20):
                await fn()
        for _ in range(requests // BLOCK):
            for label, fn, on in cases:
                settings.RATE_LIMITS = on
                for _ in range(BLOCK):
                    start = time.perf_counter()
                    await fn()
                    samples[label].append((time.perf_counter() - start) * 1000)
        return samples

    samples = asyncio.run(measure())
    settings.RATE_LIMITS = True
    alone: list[float] = []
    for _ in range(requests):
        start = time.perf_counter()
        rates.address_take(limit=rates.Limit.IP_REQUESTS, address="192.0.2.1")
        rates.user_take(user=user, limit=rates.Limit.POSTS)
        alone.append((time.perf_counter() - start) * 1000)
    result: dict[str, Any] = {"profile": profile, "cache": backend, "requests": requests}
    for label, values in samples.items():
        result[label] = summary(values)
    result["alone"] = summary(alone)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--profile", default="both", choices=["locmem", "redis", "both"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_profile(args.profile, args.requests)))
        return

    load_before = os.getloadavg()[0]
    profiles = ["locmem", "redis"] if args.profile == "both" else [args.profile]
    results = []
    for profile in profiles:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "--profile",
                profile,
                "--requests",
                str(args.requests),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))

    rows, verdicts = [], []
    for r in results:
        name = f"{r['profile']} ({r['cache']})"
        for kind in ("POST", "GET"):
            on, off = r[f"{kind} on"], r[f"{kind} off"]
            added = on["p50"] - off["p50"]
            share = added / off["p50"]
            rows.append(
                [
                    name,
                    kind,
                    off["p50"],
                    on["p50"],
                    added,
                    off["mean"],
                    on["mean"],
                    on["p99"],
                    off["p99"],
                ]
            )
            goal = added <= GOAL_P50_MS and (kind != "POST" or share <= GOAL_SHARE)
            share_goal = (
                f", {share:.1%} of the request (goal ≤ {GOAL_SHARE:.0%})" if kind == "POST" else ""
            )
            verdicts.append(
                f"- {name}, {kind}: the limiter adds {added:.3f} ms at p50 (goal ≤ {GOAL_P50_MS} ms)"
                f"{share_goal}: {'met' if goal else 'NOT met'}."
            )
        alone = r["alone"]
        verdicts.append(
            f"- {name}: the POST's two counts alone (address_take + user_take, cached group "
            f"rates) take {alone['p50']:.3f} ms p50, {alone['p99']:.3f} ms p99."
        )
    body = "\n".join(
        [
            "## Rate limiter overhead (`bench/limits.py`)",
            "",
            f"{results[0]['requests']:,} requests per path, in-process through Django's ASGI "
            f"handler (AsyncClient, the path daphne serves), alternating blocks of {BLOCK} with "
            "RATE_LIMITS on (rates too high to refuse) and off. The POST is a message without a "
            "reply: the per-address count (a worker-thread hop in the middleware) and the "
            "user's post count, with the user's group rates cached; the GET is `/api/v1/me/`, "
            "the per-address count only. locmem: the embedded profile's cache on SQLite; redis: "
            "the production profile's Redis cache (local server) on PostgreSQL. Milliseconds.",
            machine_line()
            + f" Load average (1 min) {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} "
            "at the end: the machine was shared with other work, which widens every figure.",
            "",
            table(
                [
                    "profile",
                    "request",
                    "off p50",
                    "on p50",
                    "added p50",
                    "off mean",
                    "on mean",
                    "on p99",
                    "off p99",
                ],
                rows,
            ),
            "",
            *verdicts,
            *NOTES,
        ]
    )
    print(body)
    write_section("limits", body)


if __name__ == "__main__":
    main()
