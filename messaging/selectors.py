"""Reads for messages and files."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db.models import Q, QuerySet

from messaging.livetext import live_texts
from messaging.models import File, Message
from threads.errors import Forbidden, Invalid, NotFound
from threads.ids import is_valid_client_id
from threads.models import Thread, ThreadMembership, User
from threads.permissions import Perm, has_perm, require_perm
from threads.selectors import access_thread, is_thread_owner

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser

MESSAGE_NOT_FOUND = "Message not found."
FILE_NOT_FOUND = "File not found."
MAX_PAGE_SIZE = 200


@dataclass(slots=True)
class MessageRow:
    """A message as a history page shows it: plain values. Building 200 model instances cost
    more than the page's query, so pages are read with values_list into these."""

    id: str
    thread_id: str
    seq: int
    author_id: str | None
    text: str
    meta: dict[str, Any]
    status: str
    edited: bool
    created_at: datetime
    updated_at: datetime
    file_ids: list[str] = field(default_factory=list)


_ROW_FIELDS = tuple(f.name for f in fields(MessageRow) if f.name != "file_ids")


@dataclass(frozen=True)
class MessagePage:
    messages: list[MessageRow]
    has_older: bool
    has_newer: bool


def _messages(thread: Thread) -> QuerySet[Message]:
    return Message.objects.filter(thread=thread)


def _page_rows(queryset: QuerySet[Message], limit: int) -> list[MessageRow]:
    return [MessageRow(*values) for values in queryset.values_list(*_ROW_FIELDS)[:limit]]


def attach_file_ids(rows: list[MessageRow]) -> list[MessageRow]:
    """Load every row's file ids with one query on the link table."""
    by_message: dict[str, list[str]] = defaultdict(list)
    if rows:
        links = (
            Message.files.through.objects.filter(message_id__in=[row.id for row in rows])
            .order_by("id")
            .values_list("message_id", "file_id")
        )
        for message_id, file_id in links:
            by_message[message_id].append(file_id)
    for row in rows:
        row.file_ids = by_message.get(row.id, [])
    return rows


def message_page(
    *, thread: Thread, before: int | None = None, after: int | None = None, limit: int = 50
) -> MessagePage:
    """A page of messages, oldest first, walked by the (thread, seq) index in either direction.

    No cursor: the newest `limit`. `before=S`: the `limit` messages just older than seq S.
    `after=S`: the `limit` messages just newer than S. Each page costs one index range scan,
    whatever its depth.
    """
    if before is not None and after is not None:
        raise Invalid("Give before or after, not both.", fields={"before": ["Not with after."]})
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise Invalid(f"limit must be 1 to {MAX_PAGE_SIZE}.", fields={"limit": ["Out of range."]})
    queryset = _messages(thread)
    if after is not None:
        rows = _page_rows(queryset.filter(seq__gt=after).order_by("seq"), limit + 1)
        has_newer = len(rows) > limit
        rows = _with_live_text(attach_file_ids(rows[:limit]))
        has_older = after > 0 and _any_seq(thread, seq__lte=after, order="-seq")
        return MessagePage(messages=rows, has_older=has_older, has_newer=has_newer)
    if before is not None:
        queryset = queryset.filter(seq__lt=before)
    rows = _page_rows(queryset.order_by("-seq"), limit + 1)
    has_older = len(rows) > limit
    rows = _with_live_text(attach_file_ids(rows[:limit]))
    rows.reverse()
    has_newer = before is not None and _any_seq(thread, seq__gte=before, order="seq")
    return MessagePage(messages=rows, has_older=has_older, has_newer=has_newer)


def messages_by_ids(*, user: User, ids: list[str]) -> list[MessageRow]:
    """The messages with these ids that the user may read (in threads they are in; an admin
    reads any), oldest first. Ids that are missing or not theirs are simply absent."""
    require_perm(user, Perm.MESSAGE_VIEW)
    wanted = [i for i in dict.fromkeys(ids) if is_valid_client_id(i)][:MAX_PAGE_SIZE]
    queryset = Message.objects.filter(pk__in=wanted)
    if not user.is_admin:
        queryset = queryset.filter(
            thread__in=ThreadMembership.objects.filter(user=user).values("thread_id")
        )
    rows = _page_rows(queryset.order_by("created_at", "thread_id", "seq"), MAX_PAGE_SIZE)
    return _with_live_text(attach_file_ids(rows))


def _any_seq(thread: Thread, *, order: str, **seq_filter: int) -> bool:
    # Ordered by seq so the planner walks the (thread, seq) index from the cursor; a bare
    # EXISTS lets PostgreSQL pick a sequential scan that reads half a deep thread first.
    # (.exists() would drop the ordering again.)
    return (
        Message.objects.filter(thread=thread, **seq_filter)
        .order_by(order)
        .values_list("seq", flat=True)
        .first()
    ) is not None


def access_message(*, user: User | AnonymousUser, message_id: str, perm: Perm) -> Message:
    """The message, if the user may `perm` it in its thread; one 404 for missing and not yours."""
    require_perm(user, perm)
    if not is_valid_client_id(message_id):
        raise NotFound(MESSAGE_NOT_FOUND)
    thread_id = Message.objects.filter(pk=message_id).values_list("thread_id", flat=True).first()
    if thread_id is None:
        raise NotFound(MESSAGE_NOT_FOUND)
    try:
        access_thread(user=user, thread_id=thread_id, perm=perm)
    except NotFound:
        raise NotFound(MESSAGE_NOT_FOUND) from None
    return _messages_by_id(message_id)


def _messages_by_id(message_id: str) -> Message:
    message = Message.objects.select_related("thread").get(pk=message_id)
    if message.status == Message.Status.STREAMING:
        message.text = live_texts([message.pk]).get(message.pk, message.text)
    return message


def _with_live_text(rows: list[MessageRow]) -> list[MessageRow]:
    """Replies being written show the text as of the last delta sent (see livetext)."""
    streaming = [row for row in rows if row.status == Message.Status.STREAMING]
    if streaming:
        texts = live_texts(row.id for row in streaming)
        for row in streaming:
            row.text = texts.get(row.id, row.text)
    return rows


def require_message_editor(*, user: User, message: Message) -> None:
    """Only the author edits a message."""
    if message.author_id is None or message.author_id != user.pk:
        raise Forbidden("Only the author can edit this message.")


def require_message_deleter(*, user: User, message: Message) -> None:
    """The author, the thread's owner or an admin may delete a message."""
    if user.is_admin or (message.author_id is not None and message.author_id == user.pk):
        return
    if not is_thread_owner(thread=message.thread, user=user):
        raise Forbidden("Only the author, the thread's owner or an admin can delete this message.")


def access_file(*, user: User | AnonymousUser, file_id: str) -> File:
    """A file its owner, a member of a thread it is attached to, or an admin may read."""
    if not user.is_authenticated or not is_valid_client_id(file_id):
        raise NotFound(FILE_NOT_FOUND)
    queryset = File.objects.filter(pk=file_id)
    if not (isinstance(user, User) and user.is_admin):
        access = Q(owner=user)
        # Reaching a file through a thread is reading that thread's messages.
        if has_perm(user, Perm.MESSAGE_VIEW):
            member_threads = ThreadMembership.objects.filter(user=user).values("thread_id")
            access |= Q(messages__thread_id__in=member_threads)
        queryset = queryset.filter(access).distinct()
    file = queryset.first()
    if file is None:
        raise NotFound(FILE_NOT_FOUND)
    return file
