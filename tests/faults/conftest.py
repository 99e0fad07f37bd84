"""Fault tests: real processes against database and broker instances of their own.

A fault test stops and starts what it breaks. It never touches the machine's shared PostgreSQL
or Redis, which other test runs use at the same time: it starts a private instance (a throwaway
cluster from initdb, on a free port) and breaks that one. The fixture stops the instance at the
end whatever happened, so nothing is left running or stopped behind a failed test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import free_port, unavailable

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
