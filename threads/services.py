"""Writes for users, tokens, threads, topics and memberships."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from django.contrib.auth.models import Group, Permission
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.text import slugify

from threads.errors import Conflict, Forbidden, Invalid, NotFound
from threads.ids import is_valid_client_id
from threads.models import (
    CHAT_PERMISSIONS,
    DEFAULT_GROUP_NAME,
    ApiToken,
    Thread,
    ThreadMembership,
    Topic,
    User,
)
from threads.selectors import is_thread_owner

TOKEN_PREFIX = "tl_"  # noqa: S105 - a public prefix, not a secret


def check_client_id(value: str | None, *, field: str = "id") -> None:
    if value is not None and not is_valid_client_id(value):
        raise Invalid(
            "Ids are 1-64 characters of letters, digits, '_' and '-'.",
            fields={field: ["Invalid id."]},
        )


# --- users and tokens -----------------------------------------------------------------------


def default_group_get() -> Group:
    """The group that gives regular users the ten chat permissions (made by a migration)."""
    group, created = Group.objects.get_or_create(name=DEFAULT_GROUP_NAME)
    if created:
        codenames = [codename for codename, _ in CHAT_PERMISSIONS]
        group.permissions.set(
            Permission.objects.filter(content_type__app_label="threads", codename__in=codenames)
        )
    return group


def user_grant_defaults(*, user: User) -> None:
    user.groups.add(default_group_get())


def user_create(
    *,
    username: str,
    password: str | None = None,
    email: str = "",
    is_superuser: bool = False,
) -> User:
    with transaction.atomic():
        if User.objects.filter(username=username).exists():
            raise Conflict(f"User {username!r} already exists.")
        user = User(
            username=username, email=email, is_superuser=is_superuser, is_staff=is_superuser
        )
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.save()
        user_grant_defaults(user=user)
    return user


def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def token_issue(*, user: User, name: str = "") -> tuple[ApiToken, str]:
    """Make a token; the raw value is returned once and never stored."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(user=user, name=name, digest=token_digest(raw), prefix=raw[:10])
    return token, raw


def token_revoke(*, token: ApiToken) -> None:
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])


# --- sequence numbers ---------------------------------------------------------------------


def thread_seq_take(
    *, thread_id: str, message: bool, activity_at: datetime | None = None
) -> tuple[int, int]:
    """Take the thread's next event seq, and its next message seq if `message`, in one
    statement; return (last_message_seq, last_event_seq).

    Call inside a transaction: the UPDATE locks the thread row until commit, which is what
    makes both sequences follow commit order. (UPDATE ... RETURNING, which the ORM cannot say,
    saves the read-back query on the hottest write path.)
    """
    sets = ["last_event_seq = last_event_seq + 1"]
    params: list[Any] = []
    if message:
        sets.append("last_message_seq = last_message_seq + 1")
    if activity_at is not None:
        sets.append("last_activity_at = %s")
        params.append(connection.ops.adapt_datetimefield_value(activity_at))
    table = connection.ops.quote_name(Thread._meta.db_table)
    sql = (
        f"UPDATE {table} SET {', '.join(sets)} WHERE id = %s"  # noqa: S608 - names from the model
        " RETURNING last_message_seq, last_event_seq"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, thread_id])
        row = cursor.fetchone()
    if row is None:
        raise NotFound("Thread not found.")
    return int(row[0]), int(row[1])


# --- topics ---------------------------------------------------------------------------------


def topic_create(*, name: str, slug: str = "", topic_id: str | None = None) -> tuple[Topic, bool]:
    """Create a topic; return (topic, created). Creating one that exists (same id, or same slug
    and name) returns it."""
    check_client_id(topic_id)
    name = name.strip()
    slug = slugify(slug or name)
    if not name or not slug:
        raise Invalid("A topic needs a name.", fields={"name": ["This field may not be blank."]})
    existing = Topic.objects.filter(pk=topic_id).first() if topic_id else None
    if existing is None:
        existing = Topic.objects.filter(slug=slug, name=name).first()
    if existing is not None:
        if topic_id and existing.pk != topic_id:
            raise Conflict("A topic with this slug already exists.", fields={"slug": [slug]})
        return existing, False
    try:
        with transaction.atomic():
            topic = Topic(name=name, slug=slug)
            if topic_id:
                topic.pk = topic_id
            topic.save(force_insert=True)
    except IntegrityError as exc:
        raise Conflict("A topic with this name or slug already exists.") from exc
    return topic, True


def topics_resolve(topic_ids: Sequence[str], *, as_tags: bool = False) -> list[Topic]:
    """The topics with these ids. With `as_tags` (Chat Svc, where topic ids are tags on the
    thread) an id no topic has yet becomes a tag topic; otherwise it is refused."""
    topics = list(Topic.objects.filter(pk__in=topic_ids))
    missing = sorted(set(topic_ids) - {topic.pk for topic in topics})
    if missing and not as_tags:
        raise Invalid("Unknown topic ids.", fields={"topicIds": missing})
    for topic_id in missing:
        check_client_id(topic_id, field="topicIds")
        topics.append(_tag_create(topic_id=topic_id))
    return topics


def _tag_create(*, topic_id: str) -> Topic:
    """A tag topic named after its id; a name or slug another topic holds gets a suffix."""
    slug = slugify(topic_id)[:40] or "tag"
    name = topic_id
    if Topic.objects.filter(Q(slug=slug) | Q(name=name)).exists():
        suffix = secrets.token_hex(4)
        slug, name = f"{slug}-{suffix}", f"{topic_id}-{suffix}"
    try:
        with transaction.atomic():
            topic = Topic(pk=topic_id, name=name, slug=slug, is_tag=True)
            topic.save(force_insert=True)
    except IntegrityError:  # a concurrent save made the same tag first
        return Topic.objects.get(pk=topic_id)
    return topic


def membership_add(*, thread: Thread, actor: User, users: Sequence[User]) -> list[User]:
    """Add members; only the owner (or an admin) may. Returns the users newly added."""
    require_owner(thread=thread, actor=actor)
    with transaction.atomic():
        present = set(
            ThreadMembership.objects.filter(thread=thread).values_list("user_id", flat=True)
        )
        added = [user for user in {u.pk: u for u in users}.values() if user.pk not in present]
        ThreadMembership.objects.bulk_create(
            [ThreadMembership(thread=thread, user=user) for user in added]
        )
    return added


def membership_remove(*, thread: Thread, actor: User, user_id: str) -> None:
    """Remove a member: the owner (or an admin) removes anyone but the last owner; any member
    may remove themselves (leave)."""
    if actor.pk != user_id:
        require_owner(thread=thread, actor=actor)
    if not is_valid_client_id(user_id):
        raise NotFound("Member not found.")
    with transaction.atomic():
        membership = (
            ThreadMembership.objects.select_for_update()
            .filter(thread=thread, user_id=user_id)
            .first()
        )
        if membership is None:
            raise NotFound("Member not found.")
        if membership.role == ThreadMembership.Role.OWNER:
            owners = ThreadMembership.objects.filter(
                thread=thread, role=ThreadMembership.Role.OWNER
            ).count()
            if owners <= 1:
                raise Invalid("The last owner cannot leave; delete the thread instead.")
        membership.delete()


def membership_mark_read(*, thread: Thread, user: User, seq: int | None = None) -> int:
    """Record that `user` has seen the thread's messages up to `seq` (default: all of them).
    The mark only moves forward and never past the newest message, so a stale tab cannot
    un-read what another tab read. Returns the member's mark; 0 for a non-member (an admin)."""
    target = thread.last_message_seq if seq is None else min(seq, thread.last_message_seq)
    memberships = ThreadMembership.objects.filter(thread=thread, user=user)
    memberships.filter(last_read_seq__lt=target).update(last_read_seq=target)
    mark = memberships.values_list("last_read_seq", flat=True).first()
    return int(mark or 0)


def require_owner(*, thread: Thread, actor: User) -> None:
    if actor.is_admin:
        return
    if not is_thread_owner(thread=thread, user=actor):
        raise Forbidden("Only the thread's owner can do this.")
