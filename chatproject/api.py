"""Pieces every REST interface shares: the one error shape, strict input, small parsers."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, JsonResponse
from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from threads.authentication import token_from_header
from threads.errors import ApplicationError, Invalid
from threads.models import User

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


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        return Response(error_body(exc.code, exc.message, exc.fields), status=exc.status)
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


class AutoSchema(SpectacularAutoSchema):
    """Name schema components after the view that nests them (`ThreadDetailApiInput`), so the
    many nested `InputSerializer` classes stay distinct in the OpenAPI document."""

    def get_serializer_name(self, serializer: serializers.Serializer, direction: Any) -> str:
        return serializer.__class__.__qualname__.replace(".", "")
