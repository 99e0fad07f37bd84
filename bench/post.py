"""Message-post throughput: POST /api/v1/threads/{id}/messages/ (token auth, permission and
membership checks, validation, seq under a row lock, JSON out) against a bare Django view doing
the same insert, in the same run, alternating blocks so drift hits both. SQLite and PostgreSQL.

    python bench/post.py [--posts 2000] [--backend sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_line, pg_recreate, setup_django, summary, table, write_section

BLOCK = 100


def run_backend(backend: str, posts: int) -> dict[str, object]:
    var_dir = tempfile.mkdtemp(prefix="threadline-bench-")
    url = pg_recreate("threadline_bench") if backend == "postgres" else None
    import os

    os.environ["DJANGO_SETTINGS_MODULE"] = "chatproject.settings"
    setup_django(url, var_dir)
    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client

    settings.ROOT_URLCONF = "bench.bare_urls"
    from threads import services

    call_command("migrate", verbosity=0)
    user = services.user_create(username="bench")
    from messaging.services import thread_create

    thread, _ = thread_create(creator=user, title="Posting")
    _, token = services.token_issue(user=user)
    api_client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    bare_client = Client()
    body = json.dumps({"text": "A message of ordinary length, about as long as people write."})

    def api() -> None:
        response = api_client.post(
            f"/api/v1/threads/{thread.pk}/messages/", body, content_type="application/json"
        )
        assert response.status_code == 201, response.content

    def bare() -> None:
        response = bare_client.post(
            f"/bench/bare-post/{thread.pk}/", body, content_type="application/json"
        )
        assert response.status_code == 201, response.content

    def checked() -> None:
        response = api_client.post(
            f"/bench/bare-post-checked/{thread.pk}/", body, content_type="application/json"
        )
        assert response.status_code == 201, response.content

    paths = (("bare", bare), ("checked", checked), ("api", api))
    samples: dict[str, list[float]] = {name: [] for name, _ in paths}
    elapsed = dict.fromkeys(samples, 0.0)
    for _, fn in paths:  # warm every path
        for _ in range(20):
            fn()
    for _ in range(posts // BLOCK):
        for name, fn in paths:
            for _ in range(BLOCK):
                start = time.perf_counter()
                fn()
                took = time.perf_counter() - start
                samples[name].append(took * 1000)
                elapsed[name] += took
    result: dict[str, object] = {"backend": backend, "posts": len(samples["api"])}
    for name, values in samples.items():
        result[name] = summary(values) | {"per_s": len(values) / elapsed[name]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--backend", default="both", choices=["sqlite", "postgres", "both"])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_backend(args.backend, args.posts)))
        return

    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    results = []
    for backend in backends:
        out = subprocess.run(
            [sys.executable, __file__, "--child", "--backend", backend, "--posts", str(args.posts)],
            check=True,
            capture_output=True,
            text=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))

    rows, verdicts = [], []
    for r in results:
        api, bare, checked = r["api"], r["bare"], r["checked"]
        rows.append([r["backend"], "API", api["per_s"], api["p50"], api["p99"]])
        rows.append(
            [
                r["backend"],
                "bare view, same checks",
                checked["per_s"],
                checked["p50"],
                checked["p99"],
            ]
        )
        rows.append(
            [r["backend"], "bare view, insert only", bare["per_s"], bare["p50"], bare["p99"]]
        )
        for label, base in (
            ("the bare view with the same checks", checked),
            ("the insert-only view", bare),
        ):
            share = api["per_s"] / base["per_s"]
            tail = api["p99"] / base["p99"]
            ok = share >= 0.85 and tail <= 1.25
            verdicts.append(
                f"- {r['backend']}: API throughput {share:.0%} of {label} (goal ≥ 85%), "
                f"p99 {tail:.2f}× (goal ≤ 1.25×): {'met' if ok else 'NOT met'}."
            )
    body = "\n".join(
        [
            "## Message posting (`bench/post.py`)",
            "",
            f"{results[0]['posts']:,} sequential posts per path, in-process (Django test client), "
            "alternating blocks of 100. Both bare views are plain Django views doing the same "
            "transaction (seq increment under the row lock, insert); one does nothing else, the "
            "other first does by hand what the API must (token lookup, permission, membership). "
            "Posts per second and milliseconds.",
            machine_line(),
            "",
            table(["backend", "path", "posts/s", "p50 ms", "p99 ms"], rows),
            "",
            *verdicts,
        ]
    )
    print(body)
    write_section("post", body)


if __name__ == "__main__":
    main()
