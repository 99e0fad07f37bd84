"""Start-up, idle footprint and a whole 1,000-message chat fetched over HTTP.

Starts the real server (daphne + chatproject.asgi, embedded profile on a fresh SQLite under a
scratch VAR_DIR, migrated beforehand) and, as the same-run baseline, daphne serving a minimal
ASGI app. Times spawn → first 200 from /healthz, reads resident memory after a few idle seconds,
and fetches a 1,000-message thread whole (5 pages of 200) through the API.

    python bench/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, machine_line, manage, summary, table, timed, write_section

DAPHNE = str(Path(sys.executable).with_name("daphne"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start(app: str, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int, float]:
    port = free_port()
    began = time.perf_counter()
    proc = subprocess.Popen(
        [DAPHNE, "-b", "127.0.0.1", "-p", str(port), app],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = began + 30
    while time.perf_counter() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return proc, port, time.perf_counter() - began
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"{app} did not become healthy")


SEED = """
from threads import services
from messaging.services import message_post
from threads.models import User
user = User.objects.get(username="bench")
thread, _ = services.thread_create(creator=user, title="A long chat")
for i in range(1000):
    message_post(thread=thread, author=user, text=f"Message {i}: " + "words " * 20)
print(thread.pk)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    var_dir = tempfile.mkdtemp(prefix="threadline-startup-")
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env |= {
        "VAR_DIR": var_dir,
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        "LOG_LEVEL": "ERROR",
    }
    manage(env, "migrate", "--noinput")
    manage(env, "collectstatic", "--noinput")
    token = manage(env, "issue_token", "bench", "--create").strip()
    thread_id = manage(env, "shell", "-c", SEED).strip().splitlines()[-1]

    results: dict[str, dict[str, list[float]]] = {}
    for label, app in (
        ("Threadline", "chatproject.asgi:application"),
        ("bare ASGI app", "bench.bare_asgi:application"),
    ):
        starts, rsses = [], []
        for _ in range(args.runs):
            proc, port, took = start(app, env)
            time.sleep(3)
            rsses.append(rss_mb(proc.pid))
            starts.append(took)
            if label == "Threadline" and "fetch" not in results:

                def fetch_whole(port: int = port) -> None:
                    seen, after = 0, 0
                    while True:
                        req = urllib.request.Request(
                            f"http://127.0.0.1:{port}/api/v1/threads/{thread_id}/messages/?after={after}&limit=200",
                            headers={"Authorization": f"Bearer {token}"},
                        )
                        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
                            page = json.load(resp)
                        seen += len(page["messages"])
                        if not page["hasNewer"]:
                            break
                        after = page["after"]
                    assert seen == 1000, seen

                results["fetch"] = {"ms": timed(fetch_whole, 30, warmup=3)}
                rsses[-1] = rss_mb(proc.pid)  # after serving traffic too
            proc.terminate()
            proc.wait(timeout=10)
        results[label] = {"start_s": starts, "rss_mb": rsses}

    ours, bare = results["Threadline"], results["bare ASGI app"]
    fetch = summary(results["fetch"]["ms"])
    rows = [
        [
            label,
            summary(r["start_s"])["p50"],
            max(r["start_s"]),
            summary(r["rss_mb"])["p50"],
            max(r["rss_mb"]),
        ]
        for label, r in (
            ("Threadline (daphne, embedded profile)", ours),
            ("daphne + minimal ASGI app", bare),
        )
    ]
    healthy = max(ours["start_s"]) < 3
    lean = max(ours["rss_mb"]) < 250
    body = "\n".join(
        [
            "## Start-up and footprint (`bench/startup.py`)",
            "",
            f"Spawn → first 200 from `/healthz` (seconds) and resident memory (MB) after 3 s idle, "
            f"{args.runs} starts each; the Threadline row's memory is read after it served the "
            "fetches below. Open WebUI on this machine, for reference: 17 s to healthy, 810 MB "
            "resident at idle, a 1,000-message chat fetched whole in 74 ms p50.",
            machine_line(),
            "",
            table(["server", "start p50 s", "start max s", "RSS p50 MB", "RSS max MB"], rows),
            "",
            f"A 1,000-message chat fetched whole over HTTP (5 keyset pages of 200): "
            f"p50 {fetch['p50']:.1f} ms, p99 {fetch['p99']:.1f} ms.",
            "",
            f"- healthy within 3 s: {'met' if healthy else 'NOT met'} "
            f"(max {max(ours['start_s']):.2f} s)",
            f"- under 250 MB resident: {'met' if lean else 'NOT met'} "
            f"(max {max(ours['rss_mb']):.0f} MB)",
        ]
    )
    print(body)
    write_section("startup", body)


if __name__ == "__main__":
    main()
