"""WebSocket authentication and origin checks (Channels middleware)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.security.websocket import OriginValidator
from django.conf import settings

from threads.authentication import token_from_header, user_from_token
from threads.models import User


def _token_from_scope(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            raw = token_from_header(value.decode("latin1"))
            if raw is not None:
                return raw
    query = parse_qs(scope.get("query_string", b"").decode("latin1"))
    values = query.get("token")
    return values[0] if values else None


def scope_user(scope: dict[str, Any]) -> User | None:
    """The active user a socket's scope carries (token or session), or None. Every socket door
    checks its caller with this at connect."""
    # AuthMiddlewareStack leaves a resolved lazy object; work with the real user.
    user = getattr(scope.get("user"), "_wrapped", scope.get("user"))
    return user if isinstance(user, User) and user.is_active else None


class TokenAuthMiddleware:
    """Authenticates a socket by API token (`Authorization` header or `?token=`), falling back
    to the session cookie that AuthMiddlewareStack (wrapped around this) already read. A token
    that is present but invalid leaves the socket anonymous rather than using the cookie."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        raw = _token_from_scope(scope)
        if raw is not None:
            from django.contrib.auth.models import AnonymousUser

            user = await database_sync_to_async(user_from_token)(raw)
            scope = dict(scope, user=user or AnonymousUser(), token_auth=True)
        return await self.app(scope, receive, send)


class BrowserOriginValidator(OriginValidator):
    """Checks the Origin of browser sockets against ALLOWED_HOSTS.

    Browsers always send Origin on a WebSocket handshake, and that is where cross-site use of a
    session cookie would come from. Programs (which authenticate with a token) often send none;
    Channels' stock validator refuses those, which would shut out every non-browser client.
    """

    def valid_origin(self, parsed_origin: Any) -> bool:
        if parsed_origin is None:
            return True
        return bool(self.validate_origin(parsed_origin))


def origin_checked(app: Any) -> BrowserOriginValidator:
    return BrowserOriginValidator(app, settings.ALLOWED_HOSTS)
