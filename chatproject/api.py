"""Pieces every REST interface shares: the one error shape, strict input, small parsers."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, JsonResponse
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import OpenApiParameter, extend_schema_field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rest_framework import exceptions, serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from threads.authentication import token_from_header
from threads.errors import ApplicationError, Invalid, Unavailable, retry_after_headers
from threads.ids import CLIENT_ID_PATTERN, ID_MAX_LENGTH
from threads.models import User

logger = logging.getLogger(__name__)

_DRF_CODES: dict[type[exceptions.APIException], str] = {
    exceptions.ValidationError: "invalid",
    exceptions.ParseError: "parse_error",
    exceptions.AuthenticationFailed: "not_authenticated",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "throttled",
}


def request_user(request: Request) -> User:
    """The authenticated caller. Views run behind IsAuthenticated, so this is never anonymous;
    the check keeps that promise explicit for the type checker and for any view that forgets."""
    user = request.user
    if not isinstance(user, User):
        raise exceptions.NotAuthenticated()
    return user


def bearer_token(request: Request | HttpRequest) -> str | None:
    """The raw bearer token the caller authenticated with, if any: the crew's gateway tool
    forwards it to the operator's gateway as the user's own credential."""
    return token_from_header(request.META.get("HTTP_AUTHORIZATION", ""))


def error_body(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def service_unavailable(exc: BaseException) -> Unavailable | None:
    """The 503 for a database or Redis that stopped answering (a restart, a failover): the
    request's transaction was rolled back, so nothing of it is stored and the client may simply
    retry. The pool's connection check (settings.DATABASES) keeps a dead connection from being
    handed out again, and redis-py connects anew, so once the service is back the next request
    succeeds."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        part = "database"
    elif isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
        part = "cache"  # the cache, live text and channel layer live in Redis
    else:
        return None
    logger.warning("%s unavailable: %s: %s", part, type(exc).__name__, exc)
    return Unavailable(
        f"The {part} is not answering; try again shortly.",
        retry_after=settings.DATABASE_RETRY_AFTER_SECONDS,
    )


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    exc = service_unavailable(exc) or exc
    if isinstance(exc, ApplicationError):
        return Response(
            error_body(exc.code, exc.message, exc.fields),
            status=exc.status,
            headers=retry_after_headers(exc),
        )
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body("too_large", "The request body is too large."), status=413)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail
        fields = detail if isinstance(detail, dict) else {"nonFieldErrors": detail}
        message = _first_message(fields) or "Invalid input."
        response.data = error_body(code, message, fields)
    else:
        response.data = error_body(code, str(exc.detail))
    return response


def _first_message(fields: Any) -> str:
    if isinstance(fields, dict):
        for key, value in fields.items():
            inner = _first_message(value)
            if inner:
                return f"{key}: {inner}"
    if isinstance(fields, list) and fields:
        return _first_message(fields[0])
    return str(fields) if fields else ""


def json_404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("not_found", "Not found."), status=404)


def json_500(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("server_error", "Internal server error."), status=500)


class StrictInputSerializer(serializers.Serializer):
    """Input that rejects keys it does not know, so a typo is an error rather than ignored."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({key: ["Unknown field."] for key in unknown})
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """A string that must arrive as a JSON string: DRF's CharField turns `5` into `"5"`, which
    lets a client's type error pass unnoticed and contradicts the schema's `type: string`."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return str(super().to_internal_value(data))


class StrictBooleanField(serializers.BooleanField):
    """A boolean that must arrive as JSON true or false: DRF's BooleanField also takes 0, 1,
    "yes" and "off", which the schema's `type: boolean` does not allow."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


@extend_schema_field(
    {"type": "string", "pattern": CLIENT_ID_PATTERN, "minLength": 1, "maxLength": ID_MAX_LENGTH}
)
class ClientIdField(StrictCharField):
    """An id the client chooses for a create, so that a retry returns the first; the service
    checks its form (threads.ids.is_valid_client_id), the schema states it."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", ID_MAX_LENGTH)
        super().__init__(**kwargs)


def query_int(
    params: Any, name: str, *, default: int | None = None, minimum: int = 0
) -> int | None:
    """An integer query parameter, or Invalid naming it."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise Invalid(
            f"{name} must be an integer.", fields={name: ["Must be an integer."]}
        ) from None
    if value < minimum:
        raise Invalid(f"{name} must be at least {minimum}.", fields={name: ["Out of range."]})
    return value


class ErrorDetailOutput(serializers.Serializer):
    code = serializers.CharField(help_text="A stable, machine-readable code: `not_found`, ...")
    message = serializers.CharField(help_text="For people; may change.")
    fields = serializers.DictField(  # type: ignore[assignment]
        help_text="Per-field problems of a 400, keyed by the request's field names."
    )


class ErrorOutput(serializers.Serializer):
    """The one error shape, as `error_body` writes it; documented on every operation."""

    error = ErrorDetailOutput()


# Why each error status can be answered; AutoSchema.error_statuses picks those that apply.
ERROR_DESCRIPTIONS = {
    400: "Invalid input: a body, query parameter or field that does not fit (see `fields`).",
    401: "Not authenticated: no valid bearer token or session.",
    403: "Permission denied: the caller lacks the chat-svc permission or role this needs, or "
    "a session caller's unsafe request lacks its CSRF token.",
    404: "Not found: missing, or not yours to see (both answer alike).",
    409: "Conflict: a client-chosen id already in use, or a state that refuses the action.",
    413: "The request body is too large.",
    415: "Unsupported media type: the body is not in the content type this operation reads.",
    429: "Too many requests: a rate limit, the caller's reply queue or a budget refuses this "
    "for now (the code says which); `Retry-After` gives the seconds to wait.",
    503: "Unavailable: the database or Redis is not answering (a restart, a failover); nothing "
    "of the request was stored. Retry after `Retry-After` seconds, with the same client id "
    "for a create.",
}

ADDRESS_RATE_DESCRIPTION = (
    "Too many requests from the caller's address (the per-address API rate limit); "
    "`Retry-After` gives the seconds to wait."
)

RETRY_AFTER_HEADER = {
    "schema": {"type": "integer", "minimum": 1},
    "description": "Seconds until the refused request may succeed.",
}

DEFAULT_PAGE_LIMIT = 50


def page_limit(params: Any) -> int:
    """The `limit` query parameter of a list or history route (PAGE_LIMIT_PARAM): default 50;
    its upper bound is the selector's to check."""
    return query_int(params, "limit", default=DEFAULT_PAGE_LIMIT, minimum=1) or DEFAULT_PAGE_LIMIT


class AutoSchema(SpectacularAutoSchema):
    """Names schema components after the view that nests them (`ThreadDetailApiInput`), so the
    many nested `InputSerializer` classes stay distinct in the OpenAPI document; and documents
    the error answers of every operation with the one error shape, in one place rather than
    in each view's decorator."""

    def get_serializer_name(self, serializer: serializers.Serializer, direction: Any) -> str:
        return serializer.__class__.__qualname__.replace(".", "")

    def _map_basic_serializer(self, serializer: Any, direction: Any) -> dict[str, Any]:
        schema: dict[str, Any] = super()._map_basic_serializer(serializer, direction)
        if direction == "request" and isinstance(serializer, StrictInputSerializer):
            schema["additionalProperties"] = False  # unknown keys are refused, not ignored
        return schema

    def get_operation(self, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        operation: dict[str, Any] | None = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        responses = operation.setdefault("responses", {})
        for status_code in self.error_statuses(operation):
            code = str(status_code)
            if code not in responses:
                responses[code] = {
                    **self._get_response_for_code(ErrorOutput, code),
                    "description": ERROR_DESCRIPTIONS[status_code],
                }
                if status_code in (429, 503):
                    responses[code]["headers"] = {"Retry-After": RETRY_AFTER_HEADER}
                if status_code == 429 and not self.refuses_for_the_caller():
                    responses[code]["description"] = ADDRESS_RATE_DESCRIPTION
        return operation

    def refuses_for_the_caller(self) -> bool:
        """Whether the view declares a 429 of its own: a per-user rate, the reply queue or a
        budget (the `too_many_requests_on` methods), beyond the address limit every request
        has."""
        return bool(self.view.get_throttles()) or self.method in getattr(
            self.view, "too_many_requests_on", ()
        )

    def error_statuses(self, operation: dict[str, Any]) -> list[int]:
        """The error statuses this operation can answer, read from what it declares: the
        handler (api_exception_handler) maps every refusal to one of these."""
        statuses: set[int] = set()
        parameters = operation.get("parameters", [])
        has_body = "requestBody" in operation
        if has_body or any(p.get("in") == "query" for p in parameters):
            statuses.add(400)  # the body or a query parameter fails validation
        if any(not isinstance(p, AllowAny) for p in self.view.get_permissions()):
            # Every authenticated operation also checks a chat-svc permission (or, for a
            # session caller's write, CSRF).
            statuses |= {401, 403}
        if any(p.get("in") == "path" for p in parameters) or any(
            p.get("in") == "query" and p["name"].endswith("Id") for p in parameters
        ):
            statuses.add(404)  # access_thread / access_message / access_file: one 404
        if self.method == "POST":
            statuses.add(409)  # a client-chosen id taken, or a state that refuses the action
        if has_body:
            statuses |= {413, 415}  # chatproject.limits.BodySizeLimit, DATA_UPLOAD_MAX_MEMORY_SIZE
        # Every API request counts against its client address's rate (chatproject.rates), so
        # any operation may answer 429; the views whose own work is also limited per user (or
        # queued, or budgeted) declare it (too_many_requests_on), and their 429 says so.
        statuses.add(429)
        statuses.add(503)  # service_unavailable: every operation needs the database
        return sorted(statuses)


# The paging parameters every history and list route takes, declared once for the schema.
PAGE_LIMIT_PARAM = OpenApiParameter(
    "limit", {"type": "integer", "minimum": 1, "maximum": 200}, description="1-200, default 50."
)
PAGE_CURSOR_PARAM = OpenApiParameter("cursor", str, description="nextCursor of the previous page.")
SEQ_BEFORE_PARAM = OpenApiParameter(
    "before", {"type": "integer", "minimum": 0}, description="Messages older than this seq."
)
SEQ_AFTER_PARAM = OpenApiParameter(
    "after",
    {"type": "integer", "minimum": 0},
    description="Messages newer than this seq (not with before).",
)
