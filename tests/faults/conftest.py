"""Fault tests: real processes against database and broker instances of their own.

A fault test stops and starts what it breaks. It never touches the machine's shared PostgreSQL
or Redis, which other test runs use at the same time: it starts a private instance (a throwaway
cluster from initdb, on a free port) and breaks that one. The fixture stops the instance at the
end whatever happened, so nothing is left running or stopped behind a failed test.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import (
    BIN,
    PG_ADMIN_URL,
    REPO,
    Server,
    _admin_connection,
    _run,
    _start_daphne,
    _stop,
    _wait_healthy,
    free_port,
    unavailable,
)

PG_BIN_ROOT = Path("/usr/lib/postgresql")


def _pg_bin() -> Path:
    found = sorted(PG_BIN_ROOT.glob("*/bin/pg_ctl"))
    if not found:
        unavailable("PostgreSQL's server programs (pg_ctl, initdb) are not installed")
    return found[-1].parent


def _as_postgres(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """PostgreSQL refuses to run as root: the cluster belongs to the postgres user, as the
    machine's own does."""
    command = args if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


@dataclass
class PrivatePostgres:
    bin: Path
    data: Path
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def _ctl(self, *args: str) -> None:
        result = _as_postgres(
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", *args]
        )
        if result.returncode != 0:
            pytest.fail(f"pg_ctl {' '.join(args)} failed: {result.stderr}{self.log_tail()}")

    def start(self) -> None:
        self._ctl("-o", f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        status = _as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "status"])
        return status.returncode == 0

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    bin_dir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="threadline-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    init = _as_postgres(
        [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        timeout=120,
    )
    if init.returncode != 0:
        unavailable(f"initdb failed: {init.stderr[-2000:]}")
    instance = PrivatePostgres(bin=bin_dir, data=data, port=free_port(), log=root / "pg.log")
    instance.start()
    try:
        yield instance
    finally:
        if instance.running():
            _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"])
        deadline = time.monotonic() + 10
        while instance.running() and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class PrivateRedis:
    """A redis-server of the test's own, started the way this machine starts its Redis (no
    persistence: a restart loses every key, as the machine's would)."""

    port: int
    root: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        subprocess.run(
            [
                "redis-server",
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.root),
                "--logfile",
                str(self.root / "redis.log"),
                "--pidfile",
                str(self.root / "redis.pid"),
            ],
            check=True,
            timeout=30,
        )
        deadline = time.monotonic() + 10
        while not self.running():
            if time.monotonic() > deadline:
                pytest.fail(f"redis-server on {self.port} did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "shutdown", "nosave"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        deadline = time.monotonic() + 10
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        ping = subprocess.run(
            ["redis-cli", "-p", str(self.port), "ping"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return ping.stdout.strip() == "PONG"


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        unavailable("redis-server and redis-cli are not installed")
    instance = PrivateRedis(port=free_port(), root=Path(tempfile.mkdtemp(prefix="tl-redis-")))
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(instance.root, ignore_errors=True)


@pytest.fixture
def token_server() -> Iterator[str]:
    """bench/token_server.py: an OpenAI-compatible model whose name says how it streams
    (`rate-50-n100`: 100 tokens at 50 a second); its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [
            str(BIN / "uvicorn"),
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--app-dir",
            str(REPO / "bench"),
            "token_server:app",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=10)


def server_env(
    *, database_url: str, llm_url: str, var_dir: Path, redis_url: str | None = None
) -> dict[str, str]:
    """The real settings (not the test ones) for a server or worker under test."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"THREADLINE_TESTING", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="chatproject.settings",
        DATABASE_URL=database_url,
        VAR_DIR=str(var_dir),
        PYTHONUNBUFFERED="1",
        LLM_BASE_URL=llm_url,
        LLM_API_KEY="unused",
        RUN_STALE_SECONDS="5",
        # A task the broker lost is sent again after this long (production: 120 s).
        QUEUED_STALE_SECONDS="10",
        # The scenarios post faster than a person would; the limits have their own tests.
        RATE_LIMITS="0",
    )
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    return env


def prepare_database(env: dict[str, str], *, provider_model: str) -> str:
    """Migrate, and add alice (her token is returned) and the token server as `mdl_tokens`."""
    _run(["migrate", "--noinput"], env)
    token = _run(["issue_token", "alice", "--create"], env).strip()
    _run(
        [
            "shell",
            "-c",
            "from decimal import Decimal; from agents.models import AIModel;"
            "AIModel.objects.create(id='mdl_tokens', name='token server', provider='openai',"
            f" provider_model='{provider_model}', context_window=4096, max_output_tokens=200,"
            " price_input_per_1k=Decimal('0.01'), price_output_per_1k=Decimal('0.02'),"
            " available_to_all=True)",
        ],
        env,
    )
    return token


def add_models(env: dict[str, str], models: dict[str, str]) -> None:
    """More token-server models beside `mdl_tokens`, free of charge: {model id: provider model}
    (`rate-50-n200`, see bench/token_server.py)."""
    creations = ";".join(
        f"AIModel.objects.create(id='{model_id}', name='{provider_model}', provider='openai',"
        f" provider_model='{provider_model}', context_window=4096, max_output_tokens=400,"
        " available_to_all=True)"
        for model_id, provider_model in models.items()
    )
    _run(["shell", "-c", "from agents.models import AIModel;" + creations], env)


def issue_token(env: dict[str, str], username: str) -> str:
    """A bearer token for `username`, created if new (bob, beside alice)."""
    return _run(["issue_token", username, "--create"], env).strip()


UNFINISHED = ("queued", "streaming")


def assert_no_reply_left_open(database_url: str) -> None:
    """Issue 16's property over every fault scenario: when the scenario is over, no AI message
    is left `queued` or `streaming` (each is complete, failed or cancelled), and no run is
    left `queued` or `running`. A scenario calls it last, on its own database."""
    import psycopg

    with psycopg.connect(database_url) as db:
        open_messages = db.execute(
            "SELECT id, status FROM messaging_message WHERE author_id IS NULL"
            " AND status NOT IN ('complete', 'failed', 'cancelled')"
        ).fetchall()
        open_runs = db.execute(
            "SELECT id, status FROM agents_agentrun"
            " WHERE status NOT IN ('complete', 'failed', 'cancelled')"
        ).fetchall()
    assert open_messages == [], f"AI messages left open: {open_messages}"
    assert open_runs == [], f"runs left open: {open_runs}"


def celery_worker(name: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    """A real Celery worker process, as deploy runs it (threads pool)."""
    with (logs / f"{name}.log").open("wb") as out:
        return subprocess.Popen(
            [
                str(BIN / "python"),
                "-m",
                "celery",
                "-A",
                "chatproject",
                "worker",
                "--pool",
                "threads",
                "--concurrency",
                "2",
                "--without-mingle",
                "--without-gossip",
                "-n",
                f"{name}@%h",
                "--loglevel",
                "INFO",
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@dataclass
class Stack:
    server: Server
    workers: list[subprocess.Popen[bytes]]
    worker_names: list[str]
    env: dict[str, str]
    token: str
    database_url: str
    logs: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def worker_logs(self) -> str:
        return "\n".join(
            log.read_text(errors="replace")[-3000:] for log in sorted(self.logs.glob("worker-*"))
        )


@pytest.fixture
def stack_settings() -> dict[str, str]:
    """Environment for the stack's processes beyond server_env's; a test module overrides this
    fixture to change a setting for its own stack (test_flood.py: a longer line per user)."""
    return {}


@pytest.fixture
def stack(
    private_redis: PrivateRedis,
    token_server: str,
    tmp_path: Path,
    stack_settings: dict[str, str],
) -> Iterator[Stack]:
    admin = _admin_connection()
    db_name = f"threadline_fault_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{db_name}"')
    database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{db_name}"
    env = server_env(
        database_url=database_url,
        llm_url=token_server,
        var_dir=tmp_path,
        redis_url=private_redis.url,
    )
    env.update(stack_settings)
    workers: list[subprocess.Popen[bytes]] = []
    server: Server | None = None
    stack: Stack | None = None
    try:
        token = prepare_database(env, provider_model="rate-50-n100")
        workers = [celery_worker(f"worker-{n}", env, tmp_path) for n in (1, 2)]
        server = _start_daphne("redis", env, tmp_path)
        _wait_healthy(server)
        time.sleep(3)  # the workers connect to the broker and start consuming
        stack = Stack(
            server=server,
            workers=list(workers),
            worker_names=["worker-1", "worker-2"],
            env=env,
            token=token,
            database_url=database_url,
            logs=tmp_path,
        )
        yield stack
    finally:
        if server is not None:
            _stop(server)
        # The first workers and whatever the test replaced them with.
        started = workers + (stack.workers if stack is not None else [])
        for worker in stack_workers(started):
            worker.terminate()
        for worker in stack_workers(started):
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=15)
        admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        admin.close()


@dataclass
class TwoDaphnes:
    """The stack's daphne (`a`, which a test may kill) and a second one on the same Redis and
    database (`b`), as behind a load balancer."""

    stack: Stack
    b: Server
    started: int = 0

    @property
    def a(self) -> Server:
        return self.stack.server

    def replace_a(self) -> Server:
        """A new daphne in the place of `a` (after a kill); waits until it answers."""
        _stop(self.stack.server)
        self.started += 1
        server = _start_daphne(f"a{self.started}", self.stack.env, self.stack.logs)
        self.stack.server = server  # the stack's finaliser stops this one
        _wait_healthy(server)
        return server


@pytest.fixture
def two_daphnes(stack: Stack) -> Iterator[TwoDaphnes]:
    b = _start_daphne("b", stack.env, stack.logs)
    try:
        _wait_healthy(b)
        yield TwoDaphnes(stack=stack, b=b)
    finally:
        _stop(b)


def stack_workers(workers: list[subprocess.Popen[bytes]]) -> list[subprocess.Popen[bytes]]:
    """The workers still to stop: a test may have replaced some (killed and started anew)."""
    return [worker for worker in workers if worker.poll() is None]
