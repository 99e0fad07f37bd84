"""agents.gateway: the GET to the operator's data gateway, against real HTTP servers on 127.0.0.1.

Each test starts a small threaded http.server; name resolution is faked only where a test needs
a host name other than `localhost` (gateway.test), and connections are always real.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import override_settings

from agents import gateway
from agents.gateway import GatewayError, GatewayResult, gateway_fetch

Route = Callable[[BaseHTTPRequestHandler], None]


@pytest.fixture(autouse=True)
def bundled_model() -> None:
    """These tests touch no database: replace tests/agents' transactional autouse fixture."""


@dataclass
class Seen:
    path: str
    headers: dict[str, str]

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)


@dataclass
class Server:
    port: int
    routes: dict[str, Route] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    scheme: str = "http"

    def url(self, host: str = "127.0.0.1", path: str = "/v1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    state: Server


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        assert isinstance(self.server, _HTTPServer)
        state = self.server.state
        state.seen.append(Seen(path=self.path, headers=dict(self.headers.items())))
        route = state.routes.get(urlsplit(self.path).path)
        if route is None:
            send(self, 404, b'{"error": "no route"}')
            return
        # The client may give up half way, as some tests want.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
            route(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def send(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


def json_route(data: Any, status: int = 200) -> Route:
    return lambda handler: send(handler, status, json.dumps(data).encode())


def redirect_route(location: str, status: int = 302) -> Route:
    return lambda handler: send(handler, status, b"", "text/plain", {"Location": location})


def _serve(tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    state = Server(port=httpd.server_address[1], scheme="https" if tls else "http")
    httpd.state = state
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[Server]:
    yield from _serve()


@pytest.fixture
def other_server() -> Iterator[Server]:
    yield from _serve()


def gateway_settings(url: str | None, **overrides: Any) -> override_settings:
    values: dict[str, Any] = {
        "GATEWAY_URL": url or "",
        "GATEWAY_TIMEOUT_SECONDS": 5,
        "GATEWAY_MAX_BYTES": 1024 * 1024,
        "GATEWAY_ALLOW_PRIVATE": False,
    }
    values.update(overrides)
    return override_settings(**values)


def fetch(**kwargs: Any) -> GatewayResult:
    arguments: dict[str, Any] = {
        "resource": "interactions",
        "organization_id": "org_42",
        "token": "tok-secret",
    }
    arguments.update(kwargs)
    return gateway_fetch(**arguments)


@dataclass
class FakeDNS:
    """Answers for chosen names (every other name resolves for real), and a log of lookups."""

    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)

    def set(self, host: str, *answers: list[str]) -> None:
        """Lookups of `host` get these answers in turn; the last one repeats."""
        self.answers[host] = list(answers)

    def answer(self, host: str) -> list[str]:
        self.lookups.append(host)
        queue = self.answers[host]
        return queue.pop(0) if len(queue) > 1 else queue[0]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in fake.answers:
            return real(host, port, *args, **kwargs)
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port, 0, 0))
            if ":" in address
            else (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, port))
            for address in fake.answer(host)
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return fake


# --- the request --------------------------------------------------------------------------------


def test_fetch_sends_the_token_and_the_organization_and_parses_json(server: Server) -> None:
    server.routes["/v1/interactions"] = json_route({"items": [{"id": 1}], "total": 1})
    with gateway_settings(server.url()):
        result = fetch(params={"since": "2026-01-01", "organizationId": "org_other"})

    assert result == GatewayResult(
        status=200,
        content_type="application/json",
        data={"items": [{"id": 1}], "total": 1},
        truncated=False,
    )
    [seen] = server.seen
    assert urlsplit(seen.path).path == "/v1/interactions"
    # The caller's organization wins over one smuggled into params.
    assert seen.query == {"since": ["2026-01-01"], "organizationId": ["org_42"]}
    assert seen.headers["Authorization"] == "Bearer tok-secret"
    assert seen.headers["Host"] == f"127.0.0.1:{server.port}"
    assert seen.headers["Accept"] == "application/json"


@pytest.mark.parametrize("resource", ["interactions", "patterns", "products", "organizations"])
def test_each_resource_is_a_path_under_the_gateway_url(server: Server, resource: str) -> None:
    server.routes[f"/base/path/{resource}"] = json_route([resource])
    with gateway_settings(server.url(path="/base/path/")):
        assert fetch(resource=resource).data == [resource]


def test_without_a_token_no_authorization_is_sent(server: Server) -> None:
    server.routes["/v1/products"] = json_route([])
    with gateway_settings(server.url()):
        fetch(resource="products", token=None)
    assert "Authorization" not in server.seen[0].headers


def test_text_is_returned_as_text_and_an_error_status_is_a_result(server: Server) -> None:
    server.routes["/v1/patterns"] = lambda h: send(h, 200, "naïve,1\n".encode(), "text/csv")
    server.routes["/v1/products"] = json_route({"detail": "no such org"}, status=404)
    with gateway_settings(server.url()):
        text = fetch(resource="patterns")
        missing = fetch(resource="products")
    assert (text.status, text.content_type, text.data) == (200, "text/csv", "naïve,1\n")
    assert (missing.status, missing.data) == (404, {"detail": "no such org"})


@pytest.mark.parametrize(
    "resource", ["users", "../admin", "interactions/../../admin", "Interactions", ""]
)
def test_an_unknown_resource_is_refused_before_any_request(server: Server, resource: str) -> None:
    with gateway_settings(server.url()), pytest.raises(GatewayError, match="Unknown data source"):
        fetch(resource=resource)
    assert server.seen == []


def test_an_unset_gateway_url_is_a_clear_error() -> None:
    with gateway_settings(None), pytest.raises(GatewayError) as caught:
        fetch()
    assert caught.value.message == "The data gateway is not configured on this server."


def test_a_token_that_would_break_the_header_is_refused(server: Server) -> None:
    with gateway_settings(server.url()), pytest.raises(GatewayError, match="token"):
        fetch(token="abc\r\nX-Admin: 1")
    assert server.seen == []


# --- redirects ----------------------------------------------------------------------------------


def test_a_same_origin_redirect_is_followed_with_the_token(server: Server) -> None:
    server.routes["/v1/interactions"] = redirect_route("/v2/interactions?page=1")
    server.routes["/v2/interactions"] = json_route({"moved": True})
    with gateway_settings(server.url()):
        result = fetch()
    assert result.data == {"moved": True}
    _first, second = server.seen
    assert second.path == "/v2/interactions?page=1"
    assert second.headers["Authorization"] == "Bearer tok-secret"


def test_an_absolute_redirect_to_the_same_origin_is_followed(server: Server) -> None:
    server.routes["/v1/interactions"] = redirect_route(f"{server.url()}/moved", status=307)
    server.routes["/v1/moved"] = json_route("here")
    with gateway_settings(server.url()):
        assert fetch().data == "here"


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1:{other}/v1/interactions",  # another port
        "http://localhost:{port}/v1/interactions",  # another host name for the same server
        "http://gateway.invalid/v1/interactions",  # another host
        "//gateway.invalid/v1/interactions",  # scheme-relative: another host
        "https://127.0.0.1:{port}/v1/interactions",  # another scheme
        "http://user:pw@127.0.0.1:{port}/v1/interactions",  # credentials
    ],
)
def test_a_redirect_off_the_gateway_origin_is_refused(
    server: Server, other_server: Server, location: str
) -> None:
    server.routes["/v1/interactions"] = redirect_route(
        location.format(port=server.port, other=other_server.port)
    )
    other_server.routes["/v1/interactions"] = json_route("leaked")
    with (
        gateway_settings(server.url()),
        pytest.raises(GatewayError, match="redirected to another address"),
    ):
        fetch()
    assert len(server.seen) == 1
    assert other_server.seen == []


def test_more_than_three_redirects_are_refused(server: Server) -> None:
    for hop in range(5):
        server.routes[f"/v1/hop{hop}"] = redirect_route(f"/v1/hop{hop + 1}")
    server.routes["/v1/interactions"] = redirect_route("/v1/hop0")
    with gateway_settings(server.url()), pytest.raises(GatewayError, match="too many times"):
        fetch()
    assert len(server.seen) == 4  # the request and three redirects followed


def test_three_redirects_are_followed(server: Server) -> None:
    server.routes["/v1/interactions"] = redirect_route("/v1/hop0")
    server.routes["/v1/hop0"] = redirect_route("/v1/hop1")
    server.routes["/v1/hop1"] = redirect_route("/v1/hop2")
    server.routes["/v1/hop2"] = json_route("end")
    with gateway_settings(server.url()):
        assert fetch().data == "end"


# --- size and time ------------------------------------------------------------------------------


def test_a_body_over_the_cap_is_refused(server: Server) -> None:
    server.routes["/v1/interactions"] = lambda h: send(h, 200, b"x" * 5000, "text/plain")
    server.routes["/v1/products"] = lambda h: send(h, 200, b"x" * 1000, "text/plain")
    with gateway_settings(server.url(), GATEWAY_MAX_BYTES=1000):
        with pytest.raises(GatewayError, match="too large"):
            fetch()
        assert fetch(resource="products").data == "x" * 1000  # exactly the cap is fine


def _endless(handler: BaseHTTPRequestHandler, *, declare: bool) -> None:
    """A body with no declared end (or a false small length), streamed until the client quits."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    if declare:
        handler.send_header("Content-Length", "10")  # a lie: more follows
    else:
        handler.send_header("Connection", "close")
    handler.end_headers()
    handler.wfile.write(b"[")
    chunk = b"1," * 32 * 1024
    for _ in range(4096):  # 256 MiB at most: far more than the client may read
        handler.wfile.write(chunk)


def test_an_endless_body_is_refused_after_the_cap_without_reading_it_all(server: Server) -> None:
    server.routes["/v1/interactions"] = lambda h: _endless(h, declare=False)
    started = time.monotonic()
    with (
        gateway_settings(server.url(), GATEWAY_MAX_BYTES=100_000),
        pytest.raises(GatewayError, match="too large"),
    ):
        fetch()
    assert time.monotonic() - started < 3


def test_a_body_longer_than_its_declared_length_is_not_read_past_it(server: Server) -> None:
    server.routes["/v1/interactions"] = lambda h: _endless(h, declare=True)
    with gateway_settings(server.url()), pytest.raises(GatewayError, match="could not be read"):
        fetch()  # the 10 declared bytes are not JSON; the rest is never read


def test_a_gateway_that_does_not_answer_times_out(server: Server) -> None:
    def silent(handler: BaseHTTPRequestHandler) -> None:
        server.release.wait(10)

    server.routes["/v1/interactions"] = silent
    started = time.monotonic()
    with (
        gateway_settings(server.url(), GATEWAY_TIMEOUT_SECONDS=0.5),
        pytest.raises(GatewayError) as caught,
    ):
        fetch()
    assert caught.value.message == "The data gateway did not answer in time."
    assert time.monotonic() - started < 3


def _trickle(handler: BaseHTTPRequestHandler, release: threading.Event) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/plain")
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    for _ in range(1000):  # a byte every 50 ms: each read succeeds, the whole never ends
        handler.wfile.write(b"x")
        handler.wfile.flush()
        if release.wait(0.05):
            return


def test_the_deadline_covers_the_whole_call_not_each_read(server: Server) -> None:
    server.routes["/v1/interactions"] = lambda h: _trickle(h, server.release)
    started = time.monotonic()
    with (
        gateway_settings(server.url(), GATEWAY_TIMEOUT_SECONDS=0.5),
        pytest.raises(GatewayError, match="did not answer in time"),
    ):
        fetch()
    assert time.monotonic() - started < 3


# --- broken answers -----------------------------------------------------------------------------


def test_nothing_listening_is_a_gateway_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with (
            gateway_settings(f"http://127.0.0.1:{port}"),
            pytest.raises(GatewayError, match="could not be reached"),
        ):
            fetch()


def test_garbage_and_invalid_json_are_gateway_errors(server: Server) -> None:
    def garbage(handler: BaseHTTPRequestHandler) -> None:
        handler.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
        handler.close_connection = True

    server.routes["/v1/interactions"] = garbage
    server.routes["/v1/products"] = lambda h: send(h, 200, b"{not json")
    with gateway_settings(server.url()):
        for resource in ("interactions", "products"):
            with pytest.raises(GatewayError, match="could not be read"):
                fetch(resource=resource)


# --- where it may connect -----------------------------------------------------------------------


def test_localhost_is_refused_unless_private_addresses_are_allowed(server: Server) -> None:
    server.routes["/v1/interactions"] = json_route("inside")
    with gateway_settings(server.url(host="localhost")), pytest.raises(GatewayError) as caught:
        fetch()
    assert caught.value.message == (
        "The data gateway's address is not allowed (it points to a private network)."
    )
    assert server.seen == []
    with gateway_settings(server.url(host="localhost"), GATEWAY_ALLOW_PRIVATE=True):
        assert fetch().data == "inside"


def test_an_ip_literal_in_gateway_url_is_the_operators_explicit_choice(server: Server) -> None:
    server.routes["/v1/interactions"] = json_route("ok")
    with gateway_settings(server.url(host="127.0.0.1"), GATEWAY_ALLOW_PRIVATE=False):
        assert fetch().data == "ok"


@pytest.mark.parametrize(
    "addresses",
    [
        ["10.1.2.3"],
        ["192.168.0.10"],
        ["172.16.5.4"],
        ["169.254.169.254"],  # cloud metadata
        ["100.64.0.1"],  # carrier-grade NAT
        ["0.0.0.0"],  # noqa: S104 - an answer to refuse, not a bind
        ["127.0.0.2"],
        ["240.0.0.1"],  # reserved
        ["224.0.0.1"],  # multicast
        ["::1"],
        ["fe80::1"],
        ["fd00::1"],
        ["::ffff:127.0.0.1"],  # IPv4-mapped loopback
        ["2002:7f00:1::"],  # 6to4 around 127.0.0.1
        ["93.184.215.14", "10.0.0.1"],  # one private answer among public ones
    ],
)
def test_a_name_resolving_to_a_non_public_address_is_refused_before_connecting(
    dns: FakeDNS, monkeypatch: pytest.MonkeyPatch, addresses: list[str]
) -> None:
    dns.set("gateway.test", addresses)
    connects: list[Any] = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: connects.append(a))
    with (
        gateway_settings("http://gateway.test:8080"),
        pytest.raises(GatewayError, match="not allowed"),
    ):
        fetch()
    assert connects == []


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"])
def test_a_public_address_passes_the_check(address: str) -> None:
    assert gateway._address_is_public(address)


def test_the_resolved_address_is_pinned_for_the_whole_call(server: Server, dns: FakeDNS) -> None:
    # The first lookup answers the server; a second would answer an address where nothing
    # listens. The call succeeds across a redirect only if it connects to the address it
    # checked and never asks again.
    dns.set("gateway.test", ["127.0.0.1"], ["127.0.0.9"])
    server.routes["/v1/interactions"] = redirect_route("/v1/again")
    server.routes["/v1/again"] = json_route("pinned")
    with gateway_settings(server.url(host="gateway.test"), GATEWAY_ALLOW_PRIVATE=True):
        assert fetch().data == "pinned"
    assert dns.lookups == ["gateway.test"]
    assert [seen.headers["Host"] for seen in server.seen] == [f"gateway.test:{server.port}"] * 2


# --- https ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for gateway.test (openssl's command line makes it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=gateway.test",
            "-addext",
            "subjectAltName=DNS:gateway.test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[tuple[Server, list[str | None]]]:
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []

    def remember(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        names.append(name)

    context.sni_callback = remember
    for state in _serve(context):
        yield state, names


@pytest.fixture
def trust_test_certificate(certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        gateway, "_tls_context", lambda: ssl.create_default_context(cafile=str(certificate[0]))
    )


def test_https_sends_the_name_as_sni_and_verifies_the_certificate_against_it(
    tls_server: tuple[Server, list[str | None]],
    dns: FakeDNS,
    trust_test_certificate: None,
) -> None:
    server, sni_names = tls_server
    server.routes["/v1/organizations"] = json_route({"name": "Acme"})
    dns.set("gateway.test", ["127.0.0.1"])
    with gateway_settings(server.url(host="gateway.test"), GATEWAY_ALLOW_PRIVATE=True):
        result = fetch(resource="organizations")
    assert result.data == {"name": "Acme"}
    assert sni_names == ["gateway.test"]


def test_https_refuses_a_certificate_for_another_name(
    tls_server: tuple[Server, list[str | None]],
    dns: FakeDNS,
    trust_test_certificate: None,
) -> None:
    server, _ = tls_server
    server.routes["/v1/interactions"] = json_route("should not arrive")
    dns.set("other.test", ["127.0.0.1"])
    with (
        gateway_settings(server.url(host="other.test"), GATEWAY_ALLOW_PRIVATE=True),
        pytest.raises(GatewayError, match="certificate could not be verified"),
    ):
        fetch()
    assert server.seen == []


def test_https_refuses_a_certificate_nobody_trusts(
    tls_server: tuple[Server, list[str | None]], dns: FakeDNS
) -> None:
    server, _ = tls_server
    dns.set("gateway.test", ["127.0.0.1"])
    with (
        gateway_settings(server.url(host="gateway.test"), GATEWAY_ALLOW_PRIVATE=True),
        pytest.raises(GatewayError, match="certificate could not be verified"),
    ):
        fetch()
    assert server.seen == []
