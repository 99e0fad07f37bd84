"""API tokens over `Authorization: Bearer <token>` or `Authorization: Token <token>`."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import OuterRef
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from threads.backends import permission_codes_of, permissions_preload
from threads.models import ApiToken, User
from threads.services import token_digest

_KEYWORDS = (b"bearer", b"token")
# Writing last_used_at on every request would turn every read into a write; a minute is precise
# enough for an operator deciding whether a token is still in use.
_LAST_USED_GRANULARITY = timedelta(minutes=1)


def user_from_token(raw: str) -> User | None:
    """The active user a raw token belongs to, or None. Shared by REST and WebSocket auth."""
    tokens = ApiToken.objects.select_related("user").filter(
        digest=token_digest(raw), revoked_at__isnull=True, user__is_active=True
    )
    # The user's permissions ride along (PostgreSQL): every API call checks one.
    codes = permission_codes_of(OuterRef("user_id"))
    if codes is not None:
        tokens = tokens.annotate(permission_codes=codes)
    token = tokens.first()
    if token is None:
        return None
    permissions_preload(token.user, getattr(token, "permission_codes", None))
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > _LAST_USED_GRANULARITY:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user


class BearerTokenAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[User, ApiToken | None] | None:
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() not in _KEYWORDS:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header.")
        try:
            raw = parts[1].decode()
        except UnicodeDecodeError as exc:
            raise exceptions.AuthenticationFailed("Malformed token.") from exc
        user = user_from_token(raw)
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        return user, None

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Documents the token scheme in the OpenAPI schema."""

    target_class = "threads.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: object) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "Bearer <token> or Token <token>",
        }
