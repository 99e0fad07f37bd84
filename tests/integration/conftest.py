"""Real processes on 127.0.0.1: a fresh PostgreSQL database, Redis, and two daphne servers.

The servers share the database and the Redis channel layer, so an event committed by one
reaches sockets held by the other. Where PostgreSQL or Redis is missing the tests skip with the
reason, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get(
    "INTEGRATION_PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("INTEGRATION_REDIS_URL", "redis://127.0.0.1:6379/5")
START_TIMEOUT = 30.0
USERS = ("alice", "bob", "charlie")


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: integration tests must run)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _admin_connection() -> Any:
    import psycopg

    try:
        return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}".strip())


def _check_redis() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        unavailable(f"Redis is not reachable at {REDIS_URL}: {exc}")


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@dataclass
class Live:
    a: Server
    b: Server
    tokens: dict[str, str]
    env: dict[str, str]  # the servers' environment, for a test that starts more of them
    user_ids: dict[str, str] = field(default_factory=dict)

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}


def _run(args: list[str], env: dict[str, str], timeout: float = 120) -> str:
    result = subprocess.run(
        [str(BIN / "python"), "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}", pytrace=False)
    return result.stdout


def _start_daphne(name: str, env: dict[str, str], logs: Path) -> Server:
    port = free_port()
    log = logs / f"daphne-{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(BIN / "daphne"),
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "chatproject.asgi:application",
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Server(name=name, port=port, process=process, log=log)


def _wait_healthy(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"daphne {server.name} exited:\n{server.log_tail()}", pytrace=False)
        try:
            if httpx.get(f"{server.http}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(
        f"daphne {server.name} did not answer /healthz:\n{server.log_tail()}", pytrace=False
    )


def _stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=10)


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    _check_redis()
    admin = _admin_connection()
    db_name = f"threadline_it_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{db_name}"')
    servers: list[Server] = []
    try:
        var_dir = tmp_path_factory.mktemp("threadline-var")
        env = {
            key: value
            for key, value in os.environ.items()
            # This process runs the test settings; the servers run the real ones.
            if key not in {"THREADLINE_TESTING", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
        }
        env.update(
            DJANGO_SETTINGS_MODULE="chatproject.settings",
            DATABASE_URL=PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{db_name}",
            REDIS_URL=REDIS_URL,
            VAR_DIR=str(var_dir),
            PYTHONUNBUFFERED="1",
            # Every request here comes from 127.0.0.1 and the counters live in the shared
            # Redis: limits on would make each test's answers depend on the ones before it.
            # test_rate_limits_shared.py starts its own servers with them on.
            RATE_LIMITS="0",
        )
        _run(["migrate", "--noinput"], env)
        servers = [_start_daphne(name, env, var_dir) for name in ("a", "b")]
        with ThreadPoolExecutor(len(USERS)) as pool:
            issued = pool.map(lambda u: _run(["issue_token", u, "--create"], env), USERS)
            tokens = {user: out.strip() for user, out in zip(USERS, issued, strict=True)}
        for server in servers:
            _wait_healthy(server)
        state = Live(a=servers[0], b=servers[1], tokens=tokens, env=env)
        for user in USERS:
            me = httpx.get(f"{state.a.http}/api/v1/me/", headers=state.headers(user), timeout=5)
            assert me.status_code == 200, me.text
            state.user_ids[user] = me.json()["id"]
        yield state
    finally:
        for server in servers:
            _stop(server)
        admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        admin.close()
