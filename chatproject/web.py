"""The built-in web UI: a login page and one application page. Thin: the page is a shell that
the browser fills from the REST API and the event socket, as any other client would, so the UI
can do nothing a user's own API client could not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie

from chatproject.api import error_body
from chatproject.login_guard import retry_after_seconds
from messaging.uploads import upload_limit_bytes

# Only our own scripts and styles run: an HTML injection that got past the sanitiser still
# cannot execute inline code, load a script or send data to another origin. Images may be
# blob:/data: for previews; sockets go to this origin only ('self' covers ws: since CSP 3).
UI_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


def with_csp(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        response = view(request, *args, **kwargs)
        response["Content-Security-Policy"] = UI_CSP
        response["Referrer-Policy"] = "same-origin"
        return response

    return wrapped


@with_csp
@never_cache
@ensure_csrf_cookie
@login_required
def app(request: HttpRequest) -> HttpResponse:
    config = {
        "maxFileBytes": upload_limit_bytes(),
        "maxFileMb": settings.MAX_FILE_SIZE_MB,
        "maxMessageChars": settings.MAX_MESSAGE_CHARS,
    }
    return render(request, "web/app.html", {"config": config})


login = with_csp(
    auth_views.LoginView.as_view(template_name="web/login.html", redirect_authenticated_user=True)
)
logout = auth_views.LogoutView.as_view()


@with_csp
def login_locked(request: HttpRequest, *args: Any) -> HttpResponseBase:
    """django-axes' lockout response (AXES_LOCKOUT_CALLABLE) for every login it guards: the web
    UI's, the admin's, and a JSON client's. It replaces the login view's answer, so it says the
    same whatever the username was (known, unknown or the right password), and never repeats it.

    axes calls this with (request, response, credentials) from sync code and (request,
    credentials) from async code, so the extra arguments are not read; what is needed is on
    the request."""
    wait = retry_after_seconds(request)
    message = (
        f"Too many failed sign-in attempts. Try again in {_duration(wait)}, "
        "or ask an administrator to unlock sign-in."
    )
    response: HttpResponseBase
    if _wants_json(request):
        response = JsonResponse(error_body("login_locked", message), status=429)
    else:
        response = render(request, "web/login_locked.html", {"message": message}, status=429)
    response["Retry-After"] = str(wait)
    return response


def _wants_json(request: HttpRequest) -> bool:
    accept = request.headers.get("Accept", "")
    return (
        request.path.startswith("/api/")
        or request.headers.get("X-Requested-With") == "XMLHttpRequest"
        or ("application/json" in accept and "text/html" not in accept)
    )


def _duration(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = -(-seconds // 60)
    return f"{minutes} minute{'s' if minutes != 1 else ''}"
