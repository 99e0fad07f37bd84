"""The end-to-end harness: the real server (tests/e2e/server.py, scripted test models) in a
subprocess, headless Debian Chromium driven by pytest-playwright, and helpers to log in, open a
second user's browser, call the REST API and save screenshots.

Where Chromium or Playwright is missing the browser tests skip with the reason, except in CI
(CI=true), where they fail.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import httpx
import pytest

from tests.e2e import server as e2e

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

REPO = Path(__file__).resolve().parents[2]


def _chromium() -> Path:
    """Debian's chromium: E2E_CHROMIUM if set, else /usr/bin/chromium, else on PATH."""
    if named := os.environ.get("E2E_CHROMIUM"):
        return Path(named)
    default = Path("/usr/bin/chromium")
    found = shutil.which("chromium")
    return default if default.exists() or found is None else Path(found)


CHROMIUM = _chromium()
# The README's screenshots are refreshed on request (E2E_SCREENSHOTS=1), so a test run leaves
# the checkout as it found it; otherwise they go to a scratch folder, still taken and checked.
SCREENSHOTS = (
    REPO / "docs" / "screenshots"
    if os.environ.get("E2E_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "threadline-e2e-screenshots"
)
# Migrations, collectstatic and importing CrewAI come before the first /healthz answer.
START_TIMEOUT = 90.0
HAS_PLAYWRIGHT = importlib.util.find_spec("pytest_playwright") is not None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the browser tests `e2e` and run them after every other test. Sync Playwright keeps
    an event loop running on the main thread for the rest of the session, after which
    pytest-asyncio and Django's async_to_sync fail ("Runner.run() cannot be called from a
    running event loop"); trylast, so this order survives pytest-django's reordering."""
    here = Path(__file__).parent
    browser_tests = [item for item in items if here in Path(str(item.fspath)).parents]
    for item in browser_tests:
        item.add_marker(pytest.mark.e2e)
    chosen = set(browser_tests)
    items[:] = [item for item in items if item not in chosen] + browser_tests


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the e2e tests must run)", pytrace=False)
    pytest.skip(reason)


# --- the server --------------------------------------------------------------------------------


@dataclass(frozen=True)
class E2EUser:
    username: str
    password: str
    token: str
    id: str


@dataclass
class E2EServer:
    """The running server. `users` holds alice, bob and charlie (passwords, API tokens, ids);
    `models` the catalog ids by name: "default", "e2e-crew", "e2e-priced"."""

    port: int
    var_dir: Path
    log: Path
    users: dict[str, E2EUser] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def start(self) -> None:
        env = {
            key: value
            for key, value in os.environ.items()
            # This process runs the unit tests' settings; the server runs the real ones.
            if key not in e2e.NOT_EMBEDDED
        }
        env.update(
            e2e.TELEMETRY_OFF,
            DJANGO_SETTINGS_MODULE="chatproject.settings",
            VAR_DIR=str(self.var_dir),
            PYTHONUNBUFFERED="1",
            # The browser tests seed hundreds of messages through the API in seconds; the
            # limits have their own tests (tests/chatproject/test_rate_limits.py).
            RATE_LIMITS="0",
            # Every user has a monthly budget, so the top bar shows one (test_ui_budget.py); it
            # is far above what the tests' priced replies spend.
            BUDGET_MONTHLY="500",
        )
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.e2e.server", "--port", str(self.port)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self._wait_healthy()
        seed = json.loads((self.var_dir / e2e.SEED_FILE).read_text())
        self.users = {name: E2EUser(**fields) for name, fields in seed["users"].items()}
        self.models = dict(seed["models"])

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def restart(self) -> None:
        """Stop and start again on the same port and data (a reconnect test's server restart).
        Tokens are issued anew; the old ones stay valid."""
        self.stop()
        self.start()

    def _wait_healthy(self) -> None:
        (self.var_dir / e2e.SEED_FILE).unlink(missing_ok=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"the e2e server exited:\n{self.log_tail()}", pytrace=False)
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        pytest.fail(f"the e2e server did not answer /healthz:\n{self.log_tail()}", pytrace=False)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def e2e_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2EServer]:
    var_dir = tmp_path_factory.mktemp("e2e-var")
    server = E2EServer(port=free_port(), var_dir=var_dir, log=var_dir / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def base_url(e2e_server: E2EServer) -> str:
    """pytest-base-url's fixture, so `page.goto("/login/")` reaches the e2e server."""
    return e2e_server.url


# --- the browser -------------------------------------------------------------------------------

if HAS_PLAYWRIGHT:

    @pytest.fixture(scope="session")
    def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
        """Debian's Chromium, never a downloaded build (`--browser-channel` cannot name it)."""
        if not CHROMIUM.exists():
            unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
        args = {key: value for key, value in browser_type_launch_args.items() if key != "channel"}
        return {
            **args,
            "executable_path": str(CHROMIUM),
            "args": [
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
            ],
        }

else:
    # Without pytest-playwright its fixtures do not exist; these say why instead of a
    # "fixture not found" error.
    @pytest.fixture(scope="session")
    def browser() -> None:
        unavailable("pytest-playwright is not installed (pip install -r requirements-dev.txt)")

    @pytest.fixture
    def context() -> None:
        unavailable("pytest-playwright is not installed (pip install -r requirements-dev.txt)")

    @pytest.fixture
    def page() -> None:
        unavailable("pytest-playwright is not installed (pip install -r requirements-dev.txt)")


def login(
    page: Page, base_url: str, username: str, password: str, *, path: str = "/login/"
) -> None:
    """Log in through the UI's form (Django's field names) and wait until it let us through."""
    page.goto(f"{base_url}{path}")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("[type=submit]")
    if page.url.split("?", 1)[0].endswith(path):
        raise AssertionError(f"login as {username} failed: still on {page.url}")


def new_context_as(
    browser: Browser, server: E2EServer, username: str, **context_args: Any
) -> tuple[BrowserContext, Page]:
    """A separate browser context (its own cookies: another person) logged in as `username`.
    Close the context when done."""
    context = browser.new_context(base_url=server.url, **context_args)
    page = context.new_page()
    user = server.users[username]
    login(page, server.url, user.username, user.password)
    return context, page


def shot(page: Page, name: str, **options: Any) -> Path:
    """Save a screenshot as docs/screenshots/{name}.png (the README shows them)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(target), **options)
    return target


# --- the REST API ------------------------------------------------------------------------------


class Api(httpx.Client):
    """An httpx client on the e2e server with one user's bearer token, plus the calls tests
    use to set up fixtures and to wait for replies."""

    def __init__(self, server: E2EServer, username: str) -> None:
        super().__init__(
            base_url=f"{server.url}/api/v1",
            headers={"Authorization": f"Bearer {server.users[username].token}"},
            timeout=10,
        )
        self.username = username

    def ok(self, method: str, url: str, **kwargs: Any) -> Any:
        response = self.request(method, url, **kwargs)
        assert response.status_code < 300, (method, url, response.status_code, response.text)
        return response.json() if response.content else None

    def thread_create(self, title: str = "", members: tuple[str, ...] = (), **extra: Any) -> Any:
        body: dict[str, Any] = {"userIds": list(members), **extra}
        if title:
            body["title"] = title
        return self.ok("POST", "/threads/", json=body)

    def message_post(self, thread_id: str, text: str, **extra: Any) -> Any:
        return self.ok("POST", f"/threads/{thread_id}/messages/", json={"text": text, **extra})

    def file_upload(self, name: str, content: bytes, content_type: str = "text/csv") -> Any:
        return self.ok("POST", "/files/", files={"file": (name, content, content_type)})

    def wait_reply(self, message_id: str, timeout: float = 60) -> Any:
        """The AI message once it is no longer queued or streaming."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.ok("GET", f"/messages/{message_id}/")
            if message["status"] not in {"queued", "streaming"}:
                return message
            if time.monotonic() > deadline:
                raise AssertionError(f"reply {message_id} still {message['status']}: {message}")
            time.sleep(0.2)


@pytest.fixture
def api(e2e_server: E2EServer) -> Iterator[Callable[[str], Api]]:
    """`api("alice")`: an Api client as that user (closed after the test)."""
    clients: list[Api] = []

    def make(username: str) -> Api:
        client = Api(e2e_server, username)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test that ran against the server shows the server's log tail."""
    report = yield
    server = getattr(item, "funcargs", {}).get("e2e_server")
    if report.failed and isinstance(server, E2EServer):
        report.sections.append((f"e2e server log ({server.log})", server.log_tail()))
    return report
