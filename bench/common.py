"""Shared helpers for the benchmark scripts: percentiles, Django set-up, writing results.

Each script measures the product and a baseline in the same run, prints a table and replaces its
own section of docs/benchmarks.md (between `<!-- bench:NAME -->` markers).
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def setup_django(database_url: str | None, var_dir: str) -> None:
    """Configure Django for a benchmark process before anything imports models."""
    sys.path.insert(0, str(ROOT))
    os.environ["VAR_DIR"] = var_dir
    os.environ.pop("DATABASE_URL", None)
    if database_url:
        os.environ["DATABASE_URL"] = database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
    os.environ.setdefault("LOG_LEVEL", "ERROR")
    import django

    django.setup()


def pg_recreate(name: str) -> str:
    """Drop and create a scratch PostgreSQL database; return its URL. BENCH_PG_SUFFIX is added
    to the name, so two people benchmarking on one server keep apart."""
    import psycopg

    name += os.environ.get("BENCH_PG_SUFFIX", "")

    with psycopg.connect(
        PG_ADMIN_URL.replace("postgres://", "postgresql://"), autocommit=True
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def manage(env: dict[str, str], *args: str) -> str:
    """Run `manage.py ARGS` with `env`; its stdout, stripped."""
    out = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def timed(fn: Callable[[], object], repeat: int, warmup: int = 5) -> list[float]:
    """Milliseconds of `repeat` calls of fn, after `warmup` unmeasured ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50": pct(samples, 50),
        "p99": pct(samples, 99),
        "mean": statistics.fmean(samples),
    }


def table(headers: list[str], rows: list[list[object]]) -> str:
    def cell(value: object) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line() -> str:
    return (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}."
    )


def write_section(name: str, body: str) -> None:
    """Replace (or append) this benchmark's section of docs/benchmarks.md."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nRun them with `make bench`.\n"
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + f"\n\n{block}\n"
    )
    DOC.write_text(text)
