"""ASGI entry point: HTTP through Django behind a body-size guard; WebSockets through Channels
with an origin check, session or token authentication."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")

# Django must be set up before anything imports models.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from chatproject.limits import BodySizeLimit  # noqa: E402
from messaging.routing import websocket_urlpatterns  # noqa: E402
from messaging.uploads import upload_request_limit_bytes  # noqa: E402
from threads.middleware import TokenAuthMiddleware, origin_checked  # noqa: E402

_UPLOAD_PATHS = ("/api/v1/files/", "/upload")


def _limit_for_path(path: str) -> int:
    if path.startswith(_UPLOAD_PATHS):
        return upload_request_limit_bytes()
    return int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)


if settings.EMBEDDED_WORKER and not settings.TESTING:
    from chatproject.embedded import start_reaper, start_worker

    start_worker()
    start_reaper()

application = ProtocolTypeRouter(
    {
        "http": BodySizeLimit(django_asgi_app, limit_for_path=_limit_for_path),  # type: ignore[arg-type]
        "websocket": origin_checked(
            AuthMiddlewareStack(TokenAuthMiddleware(URLRouter(websocket_urlpatterns)))
        ),
    }
)
