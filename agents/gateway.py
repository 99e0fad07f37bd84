"""A safe HTTP GET to the operator's data gateway (GATEWAY_URL), for the crew's gateway tool.

The arguments come from a model, so everything that decides where the request goes is fixed here:

- the caller picks one of four resource names, appended to GATEWAY_URL's path, and query
  parameters; the scheme, host and port are always GATEWAY_URL's;
- redirects are followed (at most MAX_REDIRECTS) only while they stay on that exact origin;
- the host name is resolved here, every address it resolves to is checked, and the socket is
  connected to a checked address. Letting the HTTP library resolve the name again would allow
  DNS rebinding: a first answer that passes the check, a second one that points inside.
  https still verifies the certificate against the host name, sent as SNI;
- private, loopback, link-local and reserved addresses are refused unless GATEWAY_URL names an
  IP address itself (the operator chose it explicitly) or GATEWAY_ALLOW_PRIVATE is on;
- one deadline (GATEWAY_TIMEOUT_SECONDS) covers the whole call, redirects included, enforced by
  a watchdog that cuts the socket, so a server that trickles bytes cannot hold a worker;
- the body is read in chunks and refused once it passes GATEWAY_MAX_BYTES.

Only the standard library: http.client reads no proxy variables and follows no redirects by
itself, which is exactly what is wanted here. Every failure is a GatewayError whose message can
be shown to the person in the chat; the details go to the log.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from django.conf import settings

logger = logging.getLogger(__name__)

RESOURCES = ("interactions", "patterns", "products", "organizations")
MAX_REDIRECTS = 3
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CHUNK = 64 * 1024
_USER_AGENT = "Threadline-Gateway/1"
_NOT_FOUND = "The data gateway could not be reached (its address could not be found)."


class GatewayError(Exception):
    """A gateway call failed. `message` is written for the person in the chat."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class GatewayResult:
    status: int
    # The media type without parameters ("application/json"); "text/plain" when the gateway
    # sends none, as HTTP says to assume.
    content_type: str
    # The parsed JSON for a JSON media type (application/json, anything+json), else the text.
    data: Any
    # Whether `data` holds only part of the body. A body over GATEWAY_MAX_BYTES is refused
    # whole rather than cut (cut JSON does not parse), so gateway_fetch always says False; the
    # flag is part of the result so a caller that shortens text for a model can say it did.
    truncated: bool = False


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str  # lower case; an IPv6 literal without brackets
    port: int
    path: str  # GATEWAY_URL's path without its trailing slash

    @property
    def host_is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def gateway_fetch(
    *,
    resource: str,
    organization_id: str,
    token: str | None,
    params: Mapping[str, str] | None = None,
) -> GatewayResult:
    """GET {GATEWAY_URL}/{resource}?organizationId=...&params, with the user's bearer token.

    `organization_id` always wins over an `organizationId` in `params`: the caller decides the
    organization, the model does not. A non-2xx status is a result, not an error (the tool can
    tell the model what the gateway said); network and protocol failures are GatewayError.
    """
    if resource not in RESOURCES:
        raise GatewayError(
            f"Unknown data source {resource!r}: choose one of {', '.join(RESOURCES)}."
        )
    if not organization_id:
        raise GatewayError("An organization is needed to read from the data gateway.")
    if token is not None and any(ch in token for ch in "\r\n\x00"):
        raise GatewayError("The access token for the data gateway is not valid.")
    origin = _configured_origin()
    query = {**(params or {}), "organizationId": organization_id}
    target = f"{origin.path}/{resource}?{urlencode(query)}"
    headers = {"Accept": "application/json", "User-Agent": _USER_AGENT, "Connection": "close"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    timeout = float(settings.GATEWAY_TIMEOUT_SECONDS)
    max_bytes = int(settings.GATEWAY_MAX_BYTES)
    deadline = time.monotonic() + timeout
    try:
        # Resolved once: every redirect hop goes to the same checked addresses.
        addresses = _addresses(origin)
        for _hop in range(MAX_REDIRECTS + 1):
            response = _get(origin, addresses, target, headers, deadline, max_bytes)
            if response.status in _REDIRECT_STATUSES and response.location is not None:
                target = _redirect_target(origin, target, response.location)
                continue
            return _result(response)
        raise GatewayError("The data gateway redirected too many times.")
    except GatewayError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _network_error(exc, timed_out=time.monotonic() >= deadline) from exc


# --- where the request may go -------------------------------------------------------------------


def _configured_origin() -> _Origin:
    url = settings.GATEWAY_URL
    if not url:
        raise GatewayError("The data gateway is not configured on this server.")
    try:
        parts = urlsplit(url)
        scheme, host, path = parts.scheme, (parts.hostname or "").lower(), parts.path
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:  # settings checked it at start-up; a test override may not have
        scheme, host, path, port = "", "", "", None
    if scheme not in _DEFAULT_PORTS or not host or not port:
        logger.error("GATEWAY_URL is not a usable http(s) URL: %r", url)
        raise GatewayError("The data gateway is not configured correctly on this server.")
    return _Origin(scheme=scheme, host=host, port=port, path=path.rstrip("/"))


def _redirect_target(origin: _Origin, current: str, location: str) -> str:
    """The path and query to follow `location` to, if it stays on the gateway's origin."""
    netloc = f"[{origin.host}]" if ":" in origin.host else origin.host
    base = f"{origin.scheme}://{netloc}:{origin.port}{current}"
    try:
        parts = urlsplit(urljoin(base, location.strip()))
        same = (
            parts.scheme == origin.scheme
            and (parts.hostname or "").lower() == origin.host
            and (parts.port or _DEFAULT_PORTS.get(parts.scheme)) == origin.port
            and parts.username is None
            and parts.password is None
        )
    except ValueError:
        same = False
    if not same:
        logger.warning("gateway redirect off its origin refused: %r", location[:300])
        raise GatewayError("The data gateway redirected to another address, which is not allowed.")
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _address_is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv6 spelling of an IPv4 address is checked as that address.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not _address_is_public(str(embedded)):
            return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


def _addresses(origin: _Origin) -> list[str]:
    """The addresses to connect to: the IP literal itself, or every address the name resolves
    to, each of which must be public unless GATEWAY_ALLOW_PRIVATE is on."""
    if origin.host_is_ip:
        return [origin.host]
    try:
        infos = socket.getaddrinfo(
            origin.host, origin.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (OSError, UnicodeError) as exc:
        logger.warning("gateway host %s does not resolve: %s", origin.host, exc)
        raise GatewayError(_NOT_FOUND) from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise GatewayError(_NOT_FOUND)
    if not settings.GATEWAY_ALLOW_PRIVATE:
        # One private answer among public ones refuses the lot: a name that mixes them is
        # either misconfigured or an attempt to reach inside.
        inside = [address for address in addresses if not _address_is_public(address)]
        if inside:
            logger.warning(
                "gateway host %s resolves to non-public addresses %s; set GATEWAY_ALLOW_PRIVATE "
                "or name the address in GATEWAY_URL to allow it",
                origin.host,
                inside,
            )
            raise GatewayError(
                "The data gateway's address is not allowed (it points to a private network)."
            )
    return addresses


# --- one request ----------------------------------------------------------------------------------


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection over a socket already connected to a checked address. The Host header
    (and for https, SNI and the certificate check) still use the host name."""

    def __init__(self, host: str, port: int, *, sock: socket.socket, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.pinned = sock

    def connect(self) -> None:
        self.sock = self.pinned


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(
        self, host: str, port: int, *, sock: socket.socket, timeout: float, tls: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=tls)
        self.pinned = sock
        self.tls = tls

    def connect(self) -> None:
        wrapped = self.tls.wrap_socket(
            self.pinned, server_hostname=self.host, do_handshake_on_connect=False
        )
        # Visible to the watchdog before the handshake, which can stall too.
        self.sock = wrapped
        wrapped.do_handshake()


def _tls_context() -> ssl.SSLContext:
    """The system's trust store, hostname checking on (a seam for tests with their own CA)."""
    return ssl.create_default_context()


@dataclass(frozen=True)
class _Response:
    status: int
    content_type: str
    charset: str
    body: bytes
    location: str | None


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("gateway deadline passed")
    return left


def _connect(addresses: list[str], port: int, deadline: float) -> socket.socket:
    last: OSError | None = None
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout=_remaining(deadline))
        except TimeoutError:
            raise
        except OSError as exc:  # refused, unreachable: try the next address
            last = exc
    raise last or OSError("no address to connect to")


def _cut(connection: http.client.HTTPConnection) -> None:
    """The watchdog: end a request that outlived its deadline by shutting its socket down, which
    wakes any blocked read. socket.socket.shutdown, not SSLSocket's, which would drop the TLS
    state under the reading thread."""
    for sock in (connection.sock, getattr(connection, "pinned", None)):
        if isinstance(sock, socket.socket) and sock.fileno() != -1:
            with contextlib.suppress(OSError):  # already closed: nothing to cut
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            return


def _get(
    origin: _Origin,
    addresses: list[str],
    target: str,
    headers: dict[str, str],
    deadline: float,
    max_bytes: int,
) -> _Response:
    sock = _connect(addresses, origin.port, deadline)
    connection: http.client.HTTPConnection | None = None
    watchdog: threading.Timer | None = None
    try:
        timeout = _remaining(deadline)
        if origin.scheme == "https":
            connection = _PinnedHTTPSConnection(
                origin.host, origin.port, sock=sock, timeout=timeout, tls=_tls_context()
            )
        else:
            connection = _PinnedHTTPConnection(origin.host, origin.port, sock=sock, timeout=timeout)
        watchdog = threading.Timer(timeout, _cut, args=(connection,))
        watchdog.daemon = True
        watchdog.start()
        connection.request("GET", target, headers=headers)
        response = connection.getresponse()
        if response.status in _REDIRECT_STATUSES:
            body = b""  # not read: only the Location matters, and it is checked before use
        else:
            body = _read_capped(response, max_bytes, deadline)
        return _Response(
            status=response.status,
            content_type=response.headers.get_content_type(),
            charset=response.headers.get_content_charset() or "utf-8",
            body=body,
            location=response.getheader("Location"),
        )
    finally:
        if watchdog is not None:
            watchdog.cancel()
        if connection is not None:
            connection.close()
        sock.close()


def _too_large(max_bytes: int) -> GatewayError:
    return GatewayError(f"The data gateway's answer is too large (over {max_bytes} bytes).")


def _read_capped(response: http.client.HTTPResponse, max_bytes: int, deadline: float) -> bytes:
    declared_header = (response.getheader("Content-Length") or "").strip()
    declared = int(declared_header) if declared_header.isdigit() else None
    if declared is not None and declared > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    total = 0
    while True:
        # Never ask for more than one byte past the cap: that byte is enough to refuse.
        chunk = response.read(min(_CHUNK, max_bytes + 1 - total))
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    body = b"".join(chunks)
    # The watchdog's cut reads as an ordinary end of the body, and http.client's read(amt)
    # does not complain about a body shorter than its Content-Length: check both here.
    if time.monotonic() >= deadline:
        raise TimeoutError("gateway deadline passed while reading the body")
    if declared is not None and total < declared:
        raise http.client.IncompleteRead(body, declared - total)
    return body


def _result(response: _Response) -> GatewayResult:
    try:
        text = response.body.decode(response.charset, "replace")
    except LookupError:  # an unknown charset name
        text = response.body.decode("utf-8", "replace")
    kind = response.content_type
    data: Any = text
    if kind == "application/json" or kind.endswith("+json"):
        try:
            data = json.loads(text) if text.strip() else None
        except ValueError as exc:
            logger.warning("gateway sent invalid JSON (%s bytes): %s", len(response.body), exc)
            raise GatewayError("The data gateway sent data that could not be read.") from exc
    return GatewayResult(status=response.status, content_type=kind, data=data, truncated=False)


def _network_error(exc: BaseException, *, timed_out: bool) -> GatewayError:
    logger.warning("gateway request failed: %s: %s", type(exc).__name__, exc)
    if timed_out or isinstance(exc, TimeoutError):
        return GatewayError("The data gateway did not answer in time.")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return GatewayError("The data gateway's certificate could not be verified.")
    if isinstance(exc, ssl.SSLError):
        return GatewayError("A secure connection to the data gateway could not be made.")
    if isinstance(exc, http.client.HTTPException | ValueError):
        return GatewayError("The data gateway sent a response that could not be read.")
    return GatewayError("The data gateway could not be reached.")
