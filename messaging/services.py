"""Writes for messages and files."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import IO, Any

from django.conf import settings
from django.core.files import File as DjangoFile
from django.db import IntegrityError, transaction
from django.utils import timezone

from messaging import events
from messaging.events import EventType
from messaging.filetypes import resolve_content_type
from messaging.models import File, Message
from messaging.storage import objects_delete_on_commit
from messaging.wire import message_json
from threads import services as thread_services
from threads.errors import Conflict, Invalid, TooLarge
from threads.ids import is_valid_client_id
from threads.models import Thread, ThreadMembership, User
from threads.selectors import thread_get
from threads.wire import member_json, thread_json

MAX_FILES_PER_MESSAGE = 20
_HASH_CHUNK = 1024 * 1024


def _check_text(text: str) -> None:
    if len(text) > settings.MAX_MESSAGE_CHARS:
        raise Invalid(
            f"Message text is longer than {settings.MAX_MESSAGE_CHARS} characters.",
            fields={"text": [f"At most {settings.MAX_MESSAGE_CHARS} characters."]},
        )


def _files_resolve(*, author: User | None, file_ids: Sequence[str]) -> list[File]:
    """The files to attach. A user attaches only their own files: attaching is what grants a
    thread's members access, so attaching someone else's file would leak it."""
    unique_ids = list(dict.fromkeys(file_ids))
    if len(unique_ids) > MAX_FILES_PER_MESSAGE:
        raise Invalid(
            f"At most {MAX_FILES_PER_MESSAGE} files per message.",
            fields={"fileIds": [f"At most {MAX_FILES_PER_MESSAGE} files."]},
        )
    if not unique_ids:
        return []
    files = list(File.objects.filter(pk__in=unique_ids, owner=author)) if author else []
    missing = sorted(set(unique_ids) - {file.pk for file in files})
    if missing:
        raise Invalid("Unknown file ids.", fields={"fileIds": missing})
    by_id = {file.pk: file for file in files}
    return [by_id[file_id] for file_id in unique_ids]


def message_post(
    *,
    thread: Thread,
    author: User | None,
    text: str,
    file_ids: Sequence[str] = (),
    meta: dict[str, Any] | None = None,
    status: str = Message.Status.COMPLETE,
    message_id: str | None = None,
) -> tuple[Message, bool]:
    """Append a message to `thread`; return (message, created).

    The thread row is locked while the next sequence number is taken, so seq is strictly
    increasing within a thread even under concurrent posts. A retried post with the same
    client id by the same author returns the first message instead of a duplicate.
    """
    _check_text(text)
    if message_id is not None and not is_valid_client_id(message_id):
        raise Invalid("Invalid message id.", fields={"id": ["Invalid id."]})
    if message_id:
        existing = Message.objects.filter(pk=message_id).first()
        if existing is not None:
            if existing.thread_id == thread.pk and existing.author_id == (
                author.pk if author else None
            ):
                return existing, False
            raise Conflict("This message id is already in use.", fields={"id": [message_id]})
    files = _files_resolve(author=author, file_ids=file_ids)
    now = timezone.now()
    try:
        # A savepoint only where an IntegrityError can happen and be answered (a client id
        # raced by a concurrent post): it costs two round trips on the hottest write path.
        with transaction.atomic(savepoint=bool(message_id)):
            # Locks the thread row: concurrent posts to this thread queue here, in seq order.
            seq, event_seq = thread_services.thread_seq_take(
                thread_id=thread.pk, message=True, activity_at=now
            )
            message = Message(
                thread=thread,
                author=author,
                seq=seq,
                text=text,
                meta=meta or {},
                status=status,
                created_at=now,
            )
            if message_id:
                message.pk = message_id
            message.save(force_insert=True)
            if files:
                message.files.set(files)
            message._file_ids = [file.pk for file in files]
            events.record(
                thread_id=thread.pk,
                type=EventType.MESSAGE_ADDED,
                data=message_json(message),
                seq=event_seq,
            )
    except IntegrityError as exc:  # a concurrent post with the same client id won the race
        raise Conflict("This message id is already in use.", fields={"id": [message_id]}) from exc
    thread.last_message_seq = seq
    thread.last_event_seq = event_seq
    thread.last_activity_at = now
    return message, True


def message_edit(*, message: Message, text: str) -> Message:
    _check_text(text)
    with transaction.atomic():
        message.text = text
        message.edited = True
        message.save(update_fields=["text", "edited", "updated_at"])
        events.record(
            thread_id=message.thread_id, type=EventType.MESSAGE_UPDATED, data=message_json(message)
        )
    return message


def message_set_status(*, message: Message, status: str, text: str | None = None) -> Message:
    """Move an AI message along queued → streaming (and back to queued for a re-run).
    Call inside a transaction."""
    message.status = status
    fields = ["status", "updated_at"]
    if text is not None:
        message.text = text
        fields.append("text")
    message.save(update_fields=fields)
    events.record(
        thread_id=message.thread_id, type=EventType.MESSAGE_UPDATED, data=message_json(message)
    )
    return message


def message_meta_update(*, message: Message, meta: dict[str, Any]) -> Message:
    """Merge keys into a message's meta (None removes a key) and tell the thread.
    Call inside a transaction."""
    merged = {**message.meta, **meta}
    for key in [k for k, v in meta.items() if v is None]:
        merged.pop(key, None)
    if merged == message.meta:
        return message
    message.meta = merged
    message.save(update_fields=["meta", "updated_at"])
    events.record(
        thread_id=message.thread_id, type=EventType.MESSAGE_UPDATED, data=message_json(message)
    )
    return message


def message_complete(
    *, message: Message, text: str, status: str, meta: dict[str, Any], usage: dict[str, Any]
) -> Message:
    """Finish an AI message (complete, failed or cancelled) with its final text.
    Call inside a transaction."""
    message.text = text
    message.status = status
    # A key given as None is removed (e.g. the "waiting" note of a reply that got its turn).
    merged = {**message.meta, **meta}
    message.meta = {key: value for key, value in merged.items() if value is not None}
    message.save(update_fields=["text", "status", "meta", "updated_at"])
    Thread.objects.filter(pk=message.thread_id).update(last_activity_at=timezone.now())
    events.record(
        thread_id=message.thread_id,
        type=EventType.MESSAGE_COMPLETED,
        data={"message": message_json(message), "usage": usage},
    )
    return message


def message_delete(*, message: Message) -> None:
    with transaction.atomic():
        events.record(
            thread_id=message.thread_id,
            type=EventType.MESSAGE_DELETED,
            data={"id": message.pk, "seq": message.seq},
        )
        message.delete()


def file_create(*, owner: User, name: str, claimed_type: str, stream: IO[bytes], size: int) -> File:
    """Store an upload. The caller has already bounded the size; it is checked again here."""
    limit = settings.MAX_FILE_SIZE_MB * 1024 * 1024
    if size > limit:
        raise TooLarge(f"Files are limited to {settings.MAX_FILE_SIZE_MB} MB.")
    if size == 0:
        raise Invalid("The file is empty.", fields={"file": ["The file is empty."]})
    clean_name = _clean_file_name(name)
    content_type = resolve_content_type(
        name=clean_name, claimed=claimed_type, stream=stream, size=size
    )
    digest = hashlib.sha256()
    stream.seek(0)
    while chunk := stream.read(_HASH_CHUNK):
        digest.update(chunk)
    stream.seek(0)
    file = File(
        owner=owner,
        name=clean_name,
        content_type=content_type,
        size=size,
        sha256=digest.hexdigest(),
        created_at=timezone.now(),
    )
    # Storage first, row second: a crash between them leaves an orphan blob, never a row that
    # points at nothing.
    file.content.save(file.pk, DjangoFile(stream), save=False)
    try:
        file.save(force_insert=True)
    except Exception:
        file.content.storage.delete(file.content.name)
        raise
    return file


def file_delete(*, files: Sequence[File]) -> None:
    """Delete file rows (detaching them from their messages) and, after commit, their objects."""
    with transaction.atomic():
        File.objects.filter(pk__in=[file.pk for file in files]).delete()
        objects_delete_on_commit((file.content.storage, file.content.name) for file in files)


def _clean_file_name(name: str) -> str:
    # Keep the last path component, drop control characters; the name is only ever displayed.
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return (base or "file")[:255]


# --- thread actions -----------------------------------------------------------------------------
# Written here, not in threads.services (the floor), because each write and the event every
# door must see of it are one transaction, and events live in this layer.


def thread_create(
    *,
    creator: User,
    title: str = "",
    members: Sequence[User] = (),
    topic_ids: Sequence[str] = (),
    session_prompt: str = "",
    thread_id: str | None = None,
    ai_reply: bool = False,
    topics_as_tags: bool = False,
) -> tuple[Thread, bool]:
    """Create a thread with `creator` as its owner and announce it to every member; return
    (thread, created).

    A retried create with the same client id returns the thread it made the first time, so
    clients can retry safely; an id taken by someone else's thread is a Conflict. With
    `topics_as_tags` (Chat Svc) a topic id no topic has yet becomes a tag topic.
    """
    thread_services.check_client_id(thread_id)
    if thread_id:
        existing = Thread.objects.filter(pk=thread_id).first()
        if existing is not None:
            if existing.creator_id == creator.pk:
                return existing, False
            raise Conflict("This thread id is already in use.", fields={"id": [thread_id]})
    now = timezone.now()
    try:
        with transaction.atomic():
            thread = Thread(
                title=title.strip() or "New chat",
                creator=creator,
                session_prompt=session_prompt,
                ai_reply=ai_reply,
                last_activity_at=now,
            )
            if thread_id:
                thread.pk = thread_id
            thread.save(force_insert=True)
            ThreadMembership.objects.create(
                thread=thread, user=creator, role=ThreadMembership.Role.OWNER
            )
            ThreadMembership.objects.bulk_create(
                [
                    ThreadMembership(thread=thread, user=member, role=ThreadMembership.Role.MEMBER)
                    for member in {m.pk: m for m in members if m.pk != creator.pk}.values()
                ]
            )
            if topic_ids:
                thread.topics.set(thread_services.topics_resolve(topic_ids, as_tags=topics_as_tags))
            seq = events.next_seq(thread.pk)
            fresh = thread_get(thread_id=thread.pk)
            events.record(
                thread_id=thread.pk,
                type=EventType.THREAD_ADDED,
                data=thread_json(fresh),
                seq=seq,
                also_to_users=[m.user_id for m in fresh.memberships.all()],
            )
    except IntegrityError as exc:  # a concurrent create with the same client id won the race
        raise Conflict("This thread id is already in use.", fields={"id": [thread_id]}) from exc
    return thread, True


def thread_update(
    *,
    thread: Thread,
    title: str | None = None,
    topic_ids: Sequence[str] | None = None,
    session_prompt: str | None = None,
    ai_reply: bool | None = None,
    topics_as_tags: bool = False,
) -> Thread:
    """Change what is given (None leaves it) and tell the thread's members."""
    with transaction.atomic():
        fields = ["updated_at"]
        if ai_reply is not None:
            thread.ai_reply = ai_reply
            fields.append("ai_reply")
        if title is not None:
            thread.title = title.strip() or "New chat"
            fields.append("title")
        if session_prompt is not None:
            thread.session_prompt = session_prompt
            fields.append("session_prompt")
        thread.save(update_fields=fields)
        if topic_ids is not None:
            thread.topics.set(thread_services.topics_resolve(topic_ids, as_tags=topics_as_tags))
        seq = events.next_seq(thread.pk)
        fresh = thread_get(thread_id=thread.pk)
        events.record(
            thread_id=thread.pk, type=EventType.THREAD_UPDATE, data=thread_json(fresh), seq=seq
        )
    return fresh


def membership_add(*, thread: Thread, actor: User, users: Sequence[User]) -> list[User]:
    """Add members; each added user is told on their own stream (chatThreadAdded)."""
    with transaction.atomic():
        added = thread_services.membership_add(thread=thread, actor=actor, users=users)
        if not added:
            return added
        memberships = {
            m.user_id: m
            for m in ThreadMembership.objects.select_related("user").filter(
                thread=thread, user__in=added
            )
        }
        for user in added:
            events.record(
                thread_id=thread.pk,
                type=EventType.MEMBER_ADDED,
                data=member_json(memberships[user.pk]),
            )
        fresh = thread_get(thread_id=thread.pk)
        events.notify_users(
            thread_id=thread.pk,
            type=EventType.THREAD_ADDED,
            data=thread_json(fresh),
            seq=fresh.last_event_seq,
            user_ids=[user.pk for user in added],
        )
    return added


def membership_remove(*, thread: Thread, actor: User, user_id: str) -> None:
    """Remove a member (or leave). The removed user's subscriptions end at this event."""
    with transaction.atomic():
        thread_services.membership_remove(thread=thread, actor=actor, user_id=user_id)
        events.record(
            thread_id=thread.pk,
            type=EventType.MEMBER_REMOVED,
            data={"userId": user_id},
            also_to_users=[user_id],
        )


def thread_delete(*, thread: Thread) -> None:
    """Delete a thread, its messages, and the files attached only to its messages.

    Lives here because the thread owns messages and files, which the floor layer does not know
    about. The deletion event is not logged: the log goes with the thread.

    Which files go: a file belongs to its owner, not to a thread, so only the files this deletion
    really orphans are deleted (rows, and their stored objects after commit): those attached to
    this thread's messages and to no message anywhere else. After the thread goes nothing
    refers to them, no member can reach them, and no API lists or deletes files, so keeping them
    would keep the bytes forever. Kept: a file also attached in another thread (its members
    still read it there) and uploads attached to nothing yet (waiting for their message; this
    deletion did not orphan them). Deleting one message keeps its files for the same reason:
    their owner can still read them and attach them again.
    """
    with transaction.atomic():
        member_ids = list(
            ThreadMembership.objects.filter(thread=thread).values_list("user_id", flat=True)
        )
        events.record(
            thread_id=thread.pk,
            type=EventType.THREAD_DELETED,
            data={"id": thread.pk},
            also_to_users=member_ids,
            log=False,
        )
        attached_here = File.objects.filter(messages__thread=thread).values("pk")
        attached_elsewhere = (
            Message.files.through.objects.filter(file_id__in=attached_here)
            .exclude(message__thread=thread)
            .values("file_id")
        )
        files = list(File.objects.filter(pk__in=attached_here).exclude(pk__in=attached_elsewhere))
        File.objects.filter(pk__in=[file.pk for file in files]).delete()
        thread.delete()
        objects_delete_on_commit((file.content.storage, file.content.name) for file in files)
