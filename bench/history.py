"""History paging at depth: one thread of N messages, pages of 50 at the newest end, the middle
and the oldest end, through the API, against a bare `SELECT ... LIMIT 50` on the same index and an
OFFSET page at the same depth, in the same run. SQLite and PostgreSQL.

    python bench/history.py [--messages 1000000] [--repeat 300] [--backend sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
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

PAGE = 50


def fill(thread_id: str, user_id: str, count: int) -> float:
    """Insert `count` messages with set-based SQL (the ORM would take minutes); return seconds."""
    from django.db import connection, transaction

    start = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                """
                INSERT INTO messaging_message
                    (id, thread_id, author_id, seq, text, meta, status, edited,
                     created_at, updated_at)
                SELECT 'msg_bench' || g, %s, %s, g,
                       'Message number ' || g || ' of the benchmark history.',
                       '{}'::jsonb, 'complete', false, now(), now()
                FROM generate_series(1, %s) AS g
                """,
                [thread_id, user_id, count],
            )
        else:
            cursor.execute(
                """
                WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < %s)
                INSERT INTO messaging_message
                    (id, thread_id, author_id, seq, text, meta, status, edited,
                     created_at, updated_at)
                SELECT 'msg_bench' || n, %s, %s, n,
                       'Message number ' || n || ' of the benchmark history.',
                       '{}', 'complete', 0, datetime('now'), datetime('now')
                FROM g
                """,
                [count, thread_id, user_id],
            )
        cursor.execute(
            "UPDATE threads_thread SET last_message_seq = %s WHERE id = %s", [count, thread_id]
        )
        if connection.vendor == "postgresql":
            cursor.execute("ANALYZE messaging_message")
        else:
            cursor.execute("ANALYZE")
    return time.perf_counter() - start


def run_backend(backend: str, messages: int, repeat: int) -> dict[str, object]:
    var_dir = tempfile.mkdtemp(prefix="threadline-bench-")
    url = pg_recreate("threadline_bench") if backend == "postgres" else None
    setup_django(url, var_dir)

    from django.core.management import call_command
    from django.db import connection
    from django.test import Client

    from threads import services

    call_command("migrate", verbosity=0)
    user = services.user_create(username="bench")
    from messaging.services import thread_create

    thread, _ = thread_create(creator=user, title="Deep history")
    fill_seconds = fill(thread.pk, user.pk, messages)
    _, token = services.token_issue(user=user)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    base = f"/api/v1/threads/{thread.pk}/messages/?limit={PAGE}"

    def api(before: int | None) -> None:
        url = base + (f"&before={before}" if before else "")
        response = client.get(url)
        assert response.status_code == 200, response.content
        assert len(response.json()["messages"]) == PAGE

    def bare(before: int) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id, seq, author_id, text, meta, status, created_at FROM messaging_message"
                " WHERE thread_id = %s AND seq < %s ORDER BY seq DESC LIMIT %s",
                [thread.pk, before, PAGE],
            )
            assert len(cursor.fetchall()) == PAGE

    def offset(depth: int) -> None:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id, seq, author_id, text, meta, status, created_at FROM messaging_message"
                " WHERE thread_id = %s ORDER BY seq DESC LIMIT %s OFFSET %s",
                [thread.pk, PAGE, depth],
            )
            assert len(cursor.fetchall()) == PAGE

    positions = {
        "newest": (None, messages + 1, 0),
        "middle": (messages // 2, messages // 2, messages - messages // 2 + 1),
        "oldest": (PAGE + 1, PAGE + 1, messages - PAGE),
    }
    results: dict[str, object] = {"backend": backend, "messages": messages, "fill_s": fill_seconds}
    for name, (before, bare_before, depth) in positions.items():
        results[f"api_{name}"] = summary(timed(functools.partial(api, before), repeat))
        results[f"bare_{name}"] = summary(timed(functools.partial(bare, bare_before), repeat))
        results[f"offset_{name}"] = summary(
            timed(functools.partial(offset, depth), max(20, repeat // 10))
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--backend", default="both", choices=["sqlite", "postgres", "both"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_backend(args.backend, args.messages, args.repeat)))
        return

    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    all_results = []
    for backend in backends:
        # One process per backend: Django's settings are fixed once set up.
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "--backend",
                backend,
                "--messages",
                str(args.messages),
                "--repeat",
                str(args.repeat),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        all_results.append(json.loads(out.stdout.strip().splitlines()[-1]))

    rows = []
    verdicts = []
    for r in all_results:
        for name in ("newest", "middle", "oldest"):
            api_s, bare_s, off_s = r[f"api_{name}"], r[f"bare_{name}"], r[f"offset_{name}"]
            rows.append(
                [
                    r["backend"],
                    name,
                    api_s["p50"],
                    api_s["p99"],
                    bare_s["p50"],
                    bare_s["p99"],
                    off_s["p50"],
                ]
            )
        ratio = r["api_oldest"]["p99"] / r["api_newest"]["p99"]
        ok = ratio <= 1.2 and r["api_oldest"]["p99"] < 15
        verdicts.append(
            f"- {r['backend']}: oldest/newest p99 = {ratio:.2f} (goal ≤ 1.2), oldest p99 "
            f"{r['api_oldest']['p99']:.2f} ms (goal < 15 ms): {'met' if ok else 'NOT met'}; "
            f"filled {r['messages']:,} rows in {r['fill_s']:.1f} s."
        )
    body = "\n".join(
        [
            "## History paging at depth (`bench/history.py`)",
            "",
            f"One thread of {all_results[0]['messages']:,} messages; a page of 50 through the API "
            "(in-process Django test client with a bearer token: auth, permission, membership, "
            "keyset query, file ids, JSON) against the bare keyset `SELECT ... LIMIT 50` on the "
            "same index, and the OFFSET query a naive pager would run at that depth. Milliseconds.",
            machine_line(),
            "",
            table(
                ["backend", "page", "API p50", "API p99", "bare p50", "bare p99", "OFFSET p50"],
                rows,
            ),
            "",
            *verdicts,
        ]
    )
    print(body)
    write_section("history", body)


if __name__ == "__main__":
    main()
