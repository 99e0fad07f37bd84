"""The client's address, as far as this deployment can know it.

Behind reverse proxies the connection comes from the nearest proxy, and the client's address is
in X-Forwarded-For, which each proxy appends to and which the client can pre-fill with anything.
Only the operator knows how many proxies are theirs (TRUSTED_PROXY_COUNT): the entry that many
places from the right is the one the outermost trusted proxy wrote; entries further left are the
client's own claims and are never used. With no trusted proxy the header is not read at all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str | None:
    """The client's IP address, or None when the server does not know it (a Unix socket)."""
    return address_from(
        request.META.get("REMOTE_ADDR", ""), request.META.get("HTTP_X_FORWARDED_FOR", "")
    )


def scope_client_ip(scope: Mapping[str, Any]) -> str | None:
    """The same for an ASGI scope (a WebSocket's): its `client` and X-Forwarded-For header."""
    client = scope.get("client") or ("", 0)
    forwarded = b",".join(
        value for name, value in scope.get("headers", ()) if name == b"x-forwarded-for"
    )
    return address_from(str(client[0] or ""), forwarded.decode("latin-1"))


def address_from(remote_addr: str, forwarded_for: str) -> str | None:
    """The client's address from the connection's peer and the X-Forwarded-For it carried."""
    remote = _valid(remote_addr)
    count = settings.TRUSTED_PROXY_COUNT
    if not count:
        return remote
    forwarded = [entry.strip() for entry in forwarded_for.split(",") if entry.strip()]
    if not forwarded:
        return remote
    # The same choice as DRF's NUM_PROXIES, so the login lockout and the throttles agree. A
    # malformed entry is a proxy misconfiguration, not a new address to count separately.
    return _valid(forwarded[-min(count, len(forwarded))]) or remote


def _valid(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None
