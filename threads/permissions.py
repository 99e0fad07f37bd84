"""The Chat Svc permission names and the one check every interface uses."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

from threads.errors import Forbidden

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

    from threads.models import User


class Perm(StrEnum):
    THREAD_CREATE = "chat-svc:thread:create"
    THREAD_VIEW = "chat-svc:thread:view"
    THREAD_EDIT = "chat-svc:thread:edit"
    THREAD_DELETE = "chat-svc:thread:delete"
    THREAD_STREAM = "chat-svc:thread:stream"
    MESSAGE_CREATE = "chat-svc:message:create"
    MESSAGE_VIEW = "chat-svc:message:view"
    MESSAGE_EDIT = "chat-svc:message:edit"
    MESSAGE_DELETE = "chat-svc:message:delete"
    MESSAGE_STREAM = "chat-svc:message:stream"


def has_perm(user: User | AnonymousUser, perm: Perm) -> bool:
    # Django caches a user's permission set on the instance, so repeated checks in one request
    # cost one pair of queries in total.
    return bool(user.is_authenticated and user.has_perm(f"threads.{perm.value}"))


def require_perm(user: User | AnonymousUser, perm: Perm) -> None:
    if not has_perm(user, perm):
        raise Forbidden(f"You do not have the {perm.value} permission.")


def user_chat_permissions(user: User | AnonymousUser) -> list[str]:
    return [perm.value for perm in Perm if has_perm(user, perm)]
