from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from chatproject import web
from messaging.compat import aiatwork

handler404 = "chatproject.api.json_404"
handler500 = "chatproject.api.json_500"


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Cheap on purpose: load balancers call it often."""
    return JsonResponse({"status": "ok"})


api_v1: list[URLPattern | URLResolver] = [
    path("", include("threads.urls")),
    path("", include("messaging.urls")),
    path("", include("agents.urls")),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]

urlpatterns = [
    path("", web.app, name="home"),
    path("login/", web.login, name="login"),
    path("logout/", web.logout, name="logout"),
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    # The compatibility protocols (docs/compat.md): 1Backend's Chat Svc and AI-at-Work's upload.
    path("chat-svc/", include("messaging.compat.chat_svc")),
    path("upload", aiatwork.upload, name="aiatwork-upload"),
]
