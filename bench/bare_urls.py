"""URLs for bench/post.py: the product's URLs plus two bare Django views that do the same insert
as the message-post API: one with nothing else, one with the same checks written by hand."""

from __future__ import annotations

import json

from django.contrib.auth.models import Permission
from django.db import transaction
from django.db.models import F
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from messaging.models import Message
from threads.models import ApiToken, Thread, ThreadMembership
from threads.services import token_digest


def _insert(thread_id: str, author_id: str | None, text: str) -> JsonResponse:
    now = timezone.now()
    with transaction.atomic():
        Thread.objects.filter(pk=thread_id).update(
            last_message_seq=F("last_message_seq") + 1, last_activity_at=now
        )
        seq = Thread.objects.filter(pk=thread_id).values_list("last_message_seq", flat=True).get()
        message = Message.objects.create(
            thread_id=thread_id, author_id=author_id, seq=seq, text=text, created_at=now
        )
    return JsonResponse({"id": message.pk, "seq": seq}, status=201)


@csrf_exempt
def bare_post(request: HttpRequest, thread_id: str) -> JsonResponse:
    """The insert alone: no authentication, no checks."""
    return _insert(thread_id, None, json.loads(request.body)["text"])


@csrf_exempt
def bare_post_checked(request: HttpRequest, thread_id: str) -> JsonResponse:
    """The same work the product must do, hand-written: find the token's user, check the
    permission and the membership, then the insert. No DRF, no layers."""
    raw = request.headers.get("Authorization", "").split(" ", 1)[-1]
    user_id = (
        ApiToken.objects.filter(digest=token_digest(raw), revoked_at__isnull=True)
        .values_list("user_id", flat=True)
        .first()
    )
    if user_id is None:
        return JsonResponse({"error": "auth"}, status=401)
    allowed = Permission.objects.filter(
        codename="chat-svc:message:create", group__user__id=user_id
    ).exists()
    member = ThreadMembership.objects.filter(thread_id=thread_id, user_id=user_id).exists()
    if not (allowed and member):
        return JsonResponse({"error": "not found"}, status=404)
    return _insert(thread_id, user_id, json.loads(request.body)["text"])


urlpatterns = [
    path("bench/bare-post/<str:thread_id>/", bare_post),
    path("bench/bare-post-checked/<str:thread_id>/", bare_post_checked),
    path("", include("chatproject.urls")),
]
