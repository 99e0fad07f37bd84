"""Where the time to first token goes inside Threadline: the reply POST and the worker's start.

In-process on PostgreSQL and Redis, no model (the provider answers at once), so what is left is
ours: the POST with `"reply": true` (authentication, access, model check, message_post,
reply_request, commit, the task published on commit) and, in the worker (a thread started when
the task is published), everything from `run_execute` until the first delta is handed to the
publisher (claim, context, model call). Queries are
counted with Django's CaptureQueriesContext; each phase is timed by wrapping the function that
does it. The Celery hop and the socket delivery are not in here (bench/streaming.py has the end
to end figure).

    python bench/reply_path.py [--trials N]
    python bench/reply_path.py --profile N   # where the CPU of N ordinary replies goes

`--profile` replaces the instant provider with one that streams 64 pieces at the bundled
model's pace (about 45 a second) and runs cProfile on every thread that works on the replies
(the request, the worker, its pacer; the publisher thread's CPU is read from the scheduler), each
profile timing its own thread's CPU; it prints the CPU per reply by package and the top
functions, and writes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_line, pct, pg_recreate, setup_django, table, write_section

REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")


class _Paced:
    """A provider that streams 64 pieces at the bundled model's pace: the worker's per-token
    work (batching, publishing, saving the partial text) happens as it does in production."""

    def count_tokens(self, text: str) -> int:
        return len(text) // 3 + 1

    def stream(self, *, messages: Any, max_tokens: int, completion: Any) -> Iterator[str]:
        completion.usage.prompt_tokens = 10
        for _ in range(64):
            time.sleep(0.022)
            completion.usage.completion_tokens += 1
            yield " word"


def _package(filename: str) -> str:
    """The package a profiled function belongs to, for the breakdown."""
    if filename.startswith("~") or filename.startswith("<"):
        return "builtins (C)"
    parts = Path(filename).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    if str(Path(filename)).startswith(str(Path(__file__).resolve().parent.parent)):
        rel = Path(filename).resolve().relative_to(Path(__file__).resolve().parent.parent)
        return "threadline: " + (rel.parts[0] if len(rel.parts) > 1 else rel.name)
    return "python stdlib"


class _Instant:
    """A provider that answers one piece at once: the model's own time is not ours."""

    def count_tokens(self, text: str) -> int:
        return len(text) // 3 + 1

    def stream(self, *, messages: Any, max_tokens: int, completion: Any) -> Iterator[str]:
        completion.usage.prompt_tokens = 10
        completion.usage.completion_tokens = 1
        yield "hi"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--history", type=int, default=0, help="messages in the thread first")
    parser.add_argument("--queries", action="store_true", help="print one trial's SQL")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--profile", type=int, help="profile this many ordinary replies")
    args = parser.parse_args()
    if args.profile:
        args.trials = args.profile

    os.environ["REDIS_URL"] = REDIS
    os.environ["CELERY_BROKER_URL"] = REDIS
    os.environ.setdefault("LLM_BASE_URL", "http://127.0.0.1:9/v1")
    db = pg_recreate("threadline_reply_path")
    setup_django(db, tempfile.mkdtemp(prefix="threadline-reply-path-"))

    import redis
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    import agents.llm as llm
    from agents import context
    from agents.models import AIModel
    from agents.services import conversation, replies, runs, streaming
    from agents.tasks import run_agent
    from messaging import events
    from messaging import services as messaging_services
    from threads import services as thread_services

    redis.Redis.from_url(REDIS).flushdb()
    call_command("migrate", "--noinput", verbosity=0)
    user = thread_services.user_create(username="probe")
    _, raw = thread_services.token_issue(user=user)
    AIModel.objects.create(
        id="mdl_probe",
        name="probe",
        provider="openai",
        provider_model="probe",
        context_window=2048,
        max_output_tokens=8,
        available_to_all=True,
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")

    spans: dict[str, list[float]] = defaultdict(list)
    marks: dict[str, float] = {}

    def timed(owner: Any, name: str, label: str) -> None:
        inner: Callable[..., Any] = getattr(owner, name)

        def wrapper(*a: Any, **kw: Any) -> Any:
            began = time.perf_counter()
            try:
                return inner(*a, **kw)
            finally:
                spans[label].append((time.perf_counter() - began) * 1000)

        setattr(owner, name, wrapper)

    # The post's phases as agents.services.conversation (which every door calls) reaches them.
    timed(conversation, "access_thread", "post: access_thread")
    timed(conversation, "model_for_request", "post: model_for_request")
    timed(messaging_services, "message_post", "post: message_post")
    timed(conversation, "reply_request", "post: reply_request (incl. its message_post)")
    timed(replies, "enqueue", "post: on commit, task published")
    timed(runs, "claim", "worker: claim")
    timed(context, "build", "worker: context.build")
    llm.get_provider = lambda model: _Paced() if args.profile else _Instant()

    # The worker runs on a thread of its own, from the moment the task is published (on
    # commit).
    workers: list[threading.Thread] = []
    worker_queries: list[float] = []
    worker_sql: list[list[str]] = []

    def work(run_id: str) -> None:
        try:
            with CaptureQueriesContext(connection) as worker_ctx:
                marks["worker"] = time.perf_counter()
                runs.run_execute(run_id=run_id)
            worker_queries.append(len(worker_ctx.captured_queries))
            worker_sql.append([q["sql"][:160] for q in worker_ctx.captured_queries])
        finally:
            connection.close()

    def apply_async(args: tuple[str], **options: Any) -> None:
        worker = threading.Thread(target=work, args=(args[0],))
        workers.append(worker)
        worker.start()

    run_agent.app.conf.task_always_eager = False
    run_agent.apply_async = apply_async

    first_delta: list[float] = []
    flush = streaming.flush

    def flush_timed(stream: Any) -> None:
        if "worker" in marks and stream.sent == 0:
            first_delta.append((time.perf_counter() - marks.pop("worker")) * 1000)
        flush(stream)

    streaming.flush = flush_timed

    post_ms: list[float] = []
    post_queries: list[float] = []
    thread_for_history = None
    if args.history:
        thread_for_history, _ = messaging_services.thread_create(creator=user, title="long")
        for i in range(args.history):
            messaging_services.message_post(thread=thread_for_history, author=user, text=f"n {i}")
    import cProfile
    import pstats

    profiles: list[cProfile.Profile] = []

    def profile_thread(*_: Any) -> None:
        # The first event in a new thread: hand the thread to a profile of its own, which
        # times that thread's CPU only.
        sys.setprofile(None)
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        profile.enable()

    main_profile = cProfile.Profile(time.thread_time)
    publisher_cpu: list[float] = []

    def publisher_seconds() -> float:
        state = sys.modules["messaging.events.publish"]._publisher_state.get("publisher")
        native = getattr(getattr(state, "thread", None), "native_id", None)
        if native is None:
            return 0.0
        stat = Path(f"/proc/self/task/{native}/schedstat").read_text().split()
        return int(stat[0]) / 1e9

    for trial in range(args.trials + 5):
        if args.profile and trial == 5:
            threading.setprofile(profile_thread)
            publisher_cpu.append(publisher_seconds())
        thread = thread_for_history or messaging_services.thread_create(creator=user, title="p")[0]
        with CaptureQueriesContext(connection) as post_ctx:
            if args.profile and trial >= 5:
                main_profile.enable()
            began = time.perf_counter()
            response = client.post(
                f"/api/v1/threads/{thread.pk}/messages/",
                {"text": "Say hi to the team.", "reply": True, "modelId": "mdl_probe"},
                format="json",
            )
            elapsed = (time.perf_counter() - began) * 1000
            main_profile.disable()
        assert response.status_code == 201, response.content
        if args.queries and trial == 5:
            print("\n".join(q["sql"][:160] for q in post_ctx.captured_queries))
        workers.pop().join(30)
        events.publish_drain()
        if args.queries and trial == 5:
            print("--- worker")
            print("\n".join(worker_sql[-1]))
        if trial < 5:  # warm-up
            for values in spans.values():
                values.clear()
            first_delta.clear()
            worker_queries.clear()
            continue
        post_ms.append(elapsed)
        post_queries.append(len(post_ctx.captured_queries))

    if args.profile:
        threading.setprofile(None)
        publisher_cpu.append(publisher_seconds())
        stats = pstats.Stats(main_profile)
        for profile in profiles:
            profile.disable()
            stats.add(profile)
        by_package: dict[str, float] = defaultdict(float)
        for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
            by_package[_package(filename)] += tottime
        total = sum(by_package.values())
        publisher_ms = (publisher_cpu[1] - publisher_cpu[0]) * 1000 / args.trials
        print(f"{args.trials} replies of 64 pieces, {len(profiles)} threads profiled besides the")
        print("request's; CPU ms per reply by package (own time, cProfile's overhead included):")
        for package, seconds in sorted(by_package.items(), key=lambda kv: -kv[1]):
            print(f"  {package:40s} {seconds * 1000 / args.trials:7.2f}")
        print(f"  {'total (profiled threads)':40s} {total * 1000 / args.trials:7.2f}")
        print(f"  {'publisher thread (scheduler)':40s} {publisher_ms:7.2f}")
        print(
            f"queries: the POST {pct(post_queries, 50):.0f}, run_execute {pct(worker_queries, 50):.0f}"
        )
        dump = Path(tempfile.gettempdir()) / "reply_path.pstats"
        stats.dump_stats(dump)
        print(f"profile written to {dump} (python -m pstats)")
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(40)
        redis.Redis.from_url(REDIS).flushdb()
        return

    rows: list[list[object]] = [
        ["post: whole request (test client)", pct(post_ms, 50), pct(post_ms, 99)]
    ]
    for label, values in spans.items():
        rows.append([label, pct(values, 50), pct(values, 99)])
    rows.append(
        ["worker: run_execute start → first delta out", pct(first_delta, 50), pct(first_delta, 99)]
    )
    body = "\n".join(
        [
            "## Where a reply's first token waits (`bench/reply_path.py`)",
            "",
            "In-process on PostgreSQL and Redis with a provider that answers at once, so only "
            'Threadline\'s own work is left: the POST with `"reply": true` through the Django '
            "test client (authentication, access, model check, both messages, the run, the "
            "reservation, commit, the task published on commit) and, in the worker, `run_execute` "
            "from its start until the first delta is handed on: the claim, the context, the "
            "model asked, its first piece sent. The worker, on a thread of its own started when "
            "the task is published, overlaps the end of the post's request on the same two "
            "cores. Each phase is timed by "
            "wrapping the function that does it (message_post runs twice per POST: both "
            f"counted). {args.trials} trials, milliseconds. Not in here: daphne, the Celery "
            "hop, the socket (bench/streaming.py measures the whole path).",
            machine_line(),
            "",
            table(["phase", "p50 ms", "p99 ms"], rows),
            "",
            f"Queries (CaptureQueriesContext, BEGIN/COMMIT/SAVEPOINT included): the reply POST "
            f"{pct(post_queries, 50):.0f}, the whole `run_execute` {pct(worker_queries, 50):.0f}.",
        ]
    )
    print(body)
    if args.write:
        write_section("reply_path", body)
    redis.Redis.from_url(REDIS).flushdb()


if __name__ == "__main__":
    main()
