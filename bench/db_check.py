"""What the pool's connection health check costs an API call: GET /api/v1/me/ and a message
POST (token auth, in-process Django client) on PostgreSQL with CONN_HEALTH_CHECKS on and off,
alternating blocks in one run. The check is one empty round trip as a connection leaves the
pool; it is what turns a database restart into a retry instead of 500s (docs/reliability.md).

    python bench/db_check.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    machine_line,
    pg_recreate,
    setup_django,
    summary,
    table,
    timed,
    write_section,
)

BLOCK = 100


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    setup_django(pg_recreate("threadline_bench_check"), tempfile.mkdtemp(prefix="tl-bench-"))
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from tests.factories import ThreadFactory, UserFactory
    from threads import services as thread_services

    call_command("migrate", verbosity=0)
    user = UserFactory.create(username="bench")
    thread = ThreadFactory.create(creator=user)
    raw = thread_services.token_issue(user=user)[1]
    client = Client(headers={"Authorization": f"Bearer {raw}"})
    url = f"/api/v1/threads/{thread.pk}/messages/"

    def me() -> None:
        assert client.get("/api/v1/me/").status_code == 200

    def post() -> None:
        response = client.post(url, {"text": "hello"}, content_type="application/json")
        assert response.status_code == 201

    samples: dict[tuple[str, bool], list[float]] = {}
    for _ in range(max(1, args.requests // BLOCK)):
        for checks in (False, True):
            connection.close()
            connection.close_pool()  # type: ignore[attr-defined]  # PostgreSQL: pool made again
            connection.settings_dict["CONN_HEALTH_CHECKS"] = checks
            for name, fn in (("GET /api/v1/me/", me), ("POST a message", post)):
                samples.setdefault((name, checks), []).extend(timed(fn, BLOCK, warmup=3))
    rows = []
    for name in ("GET /api/v1/me/", "POST a message"):
        off, on = summary(samples[(name, False)]), summary(samples[(name, True)])
        rows.append([name, off["p50"], on["p50"], on["p50"] - off["p50"], off["p99"], on["p99"]])
    body = "\n\n".join(
        [
            "## The pool's connection check (`bench/db_check.py`)",
            machine_line() + f" PostgreSQL, {args.requests} requests of each kind per setting,"
            f" alternating blocks of {BLOCK}; milliseconds; load average at the end"
            f" {os.getloadavg()[0]:.1f}. The check is one empty query per request: it should"
            " cost a loopback round trip (about 0.1 ms); more than that is this shared machine's"
            " noise.",
            table(
                ["request", "p50 off", "p50 on", "added p50", "p99 off", "p99 on"],
                rows,
            ),
        ]
    )
    print(body)
    write_section("db_check", body)


if __name__ == "__main__":
    main()
