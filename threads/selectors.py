"""Reads. `access_thread` is the only way an interface reaches a thread."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from django.db.models import Prefetch, Q, QuerySet

from threads.errors import Invalid, NotFound
from threads.ids import is_valid_client_id
from threads.models import Thread, ThreadMembership, Topic, User
from threads.permissions import Perm, require_perm

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

THREAD_NOT_FOUND = "Thread not found."


def _thread_queryset() -> QuerySet[Thread]:
    return Thread.objects.prefetch_related(
        Prefetch(
            "memberships",
            queryset=ThreadMembership.objects.select_related("user").order_by("joined_at", "id"),
        ),
        "topics",
    )


def access_thread(
    *, user: User | AnonymousUser, thread_id: str, perm: Perm, prefetch: bool = False
) -> Thread:
    """The thread, if `user` holds `perm` and is a member (an admin reaches any thread).

    Raises Forbidden when the permission is missing (whatever the id: that reveals nothing) and
    one NotFound, with one message, both for an id that does not exist and for a thread the user
    is not in, so an outsider cannot tell the two apart.
    """
    require_perm(user, perm)
    if not isinstance(user, User) or not is_valid_client_id(thread_id):
        # Anonymous callers were refused above; an id no thread can have (NUL bytes, spaces)
        # is simply not found, without asking the database.
        raise NotFound(THREAD_NOT_FOUND)
    queryset = _thread_queryset() if prefetch else Thread.objects.all()
    if not user.is_admin:
        queryset = queryset.filter(memberships__user=user)
    thread = queryset.filter(pk=thread_id).first()
    if thread is None:
        raise NotFound(THREAD_NOT_FOUND)
    return thread


def membership_role(*, thread: Thread, user: User) -> str | None:
    return (
        ThreadMembership.objects.filter(thread=thread, user=user)
        .values_list("role", flat=True)
        .first()
    )


def is_thread_owner(*, thread: Thread, user: User) -> bool:
    return membership_role(thread=thread, user=user) == ThreadMembership.Role.OWNER


@dataclass(frozen=True)
class ThreadPage:
    threads: list[Thread]
    next_cursor: str | None


def _encode_thread_cursor(thread: Thread) -> str:
    raw = f"{thread.last_activity_at.isoformat()}|{thread.pk}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_thread_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.urlsafe_b64decode(padded.encode()).decode()
        when, thread_id = raw.split("|", 1)
        moment = datetime.fromisoformat(when)
        if moment.tzinfo is None or not is_valid_client_id(thread_id):
            raise ValueError("not a cursor we made")
        return moment.astimezone(UTC), thread_id
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError) as exc:
        raise Invalid("Malformed cursor.", fields={"cursor": ["Malformed cursor."]}) from exc


MAX_THREAD_PAGE = 200


def thread_list(
    *,
    user: User,
    topic: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> ThreadPage:
    """The user's threads, newest activity first, keyset-paged on (last_activity_at, id)."""
    if not 1 <= limit <= MAX_THREAD_PAGE:
        raise Invalid(f"limit must be 1 to {MAX_THREAD_PAGE}.", fields={"limit": ["Out of range."]})
    require_perm(user, Perm.THREAD_VIEW)
    queryset = _thread_queryset().filter(memberships__user=user)
    if topic and "\x00" in topic:
        raise Invalid("Malformed topic.", fields={"topic": ["Malformed."]})
    if topic:
        queryset = queryset.filter(Q(topics__id=topic) | Q(topics__slug=topic))
    if cursor:
        when, thread_id = _decode_thread_cursor(cursor)
        queryset = queryset.filter(
            Q(last_activity_at__lt=when) | Q(last_activity_at=when, id__lt=thread_id)
        )
    rows = list(queryset.order_by("-last_activity_at", "-id")[: limit + 1])
    has_more = len(rows) > limit
    rows = rows[:limit]
    return ThreadPage(
        threads=rows, next_cursor=_encode_thread_cursor(rows[-1]) if has_more and rows else None
    )


def thread_get(*, thread_id: str) -> Thread:
    """A thread with members and topics loaded, for output after access was checked."""
    return _thread_queryset().get(pk=thread_id)


def threads_by_ids(*, user: User, ids: list[str] | None) -> list[Thread]:
    require_perm(user, Perm.THREAD_VIEW)
    queryset = _thread_queryset().filter(memberships__user=user)
    if ids:
        queryset = queryset.filter(pk__in=[i for i in ids if is_valid_client_id(i)])
    return list(queryset.order_by("-last_activity_at", "-id"))


def topic_list(*, user: User) -> QuerySet[Topic]:
    """The topics made as topics, and the tags (Chat Svc topic ids) on threads the user can
    see: a tag's name tells of a thread, so it is no more public than the thread."""
    queryset = Topic.objects.all()
    if not user.is_admin:
        queryset = queryset.filter(
            Q(is_tag=False) | Q(pk__in=Topic.objects.filter(threads__memberships__user=user))
        )
    return queryset.order_by("name")


def users_by_reference(*, refs: list[str]) -> tuple[list[User], list[str]]:
    """Resolve user ids or usernames; return the users found and the references that were not."""
    found = list(User.objects.filter(Q(pk__in=refs) | Q(username__in=refs), is_active=True))
    known = {user.pk for user in found} | {user.username for user in found}
    return found, [ref for ref in refs if ref not in known]
