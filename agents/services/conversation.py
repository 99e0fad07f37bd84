"""The conversation layer: what every door does to a conversation, written once.

The native REST API, the web UI (a client of that API), Chat Svc, the dashboard BFF and
AI-at-Work's socket and upload all start, post to, read and delete conversations through these
functions, so a rule or a fix lands once for every protocol. The doors only parse their
protocol's request and shape its answer.

It sits in `agents`, the top domain layer, and on top of this package, because posting composes
a message (messaging) with its AI reply (agents.services.replies) in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from django.db import transaction

from agents.models import AgentRun, AIModel
from agents.selectors import model_for_request
from agents.services.artifacts import thread_delete
from agents.services.lines import reply_queue_check
from agents.services.replies import reply_regenerate, reply_request
from messaging import selectors as message_selectors
from messaging import services as message_services
from messaging.models import File, Message
from messaging.selectors import MessagePage, MessageRow
from threads import rates
from threads import services as thread_services
from threads.errors import Invalid
from threads.models import Thread, User
from threads.permissions import Perm, require_perm
from threads.selectors import access_thread


@dataclass(frozen=True)
class Posted:
    """A posted message; `created` is False for a retried post (same client id), which asks for
    nothing; `run` is the AI reply it asked for, if any."""

    message: Message
    created: bool
    run: AgentRun | None


def message_send(
    *,
    user: User,
    thread: Thread,
    text: str,
    file_ids: Sequence[str] = (),
    meta: dict[str, Any] | None = None,
    message_id: str | None = None,
    reply: bool | None = None,
    model_ref: str | None = None,
    model: AIModel | None = None,
    gateway_token: str | None = None,
) -> Posted:
    """Post `user`'s message to `thread` and, when a reply is wanted, ask the model for it, in
    one transaction: a refused reply (the balance, a full reply line) takes the question back
    with it.

    `reply` None means the thread's aiReply setting. The model is `model` when the door has
    already resolved one (AI-at-Work's legacy numbers), else `model_ref` (an id or name) or the
    default; a model the user may not use is refused before anything is written, and so is a
    post over the user's rate limits (RateLimited).
    `gateway_token` is the asker's bearer token, forwarded by the crew's gateway tool.
    """
    _require_content(text=text, file_ids=file_ids)
    wants_reply = thread.ai_reply if reply is None else reply
    model = _reply_model(user=user, wants_reply=wants_reply, model_ref=model_ref, model=model)
    _post_limits_take(user=user, reply=model is not None)
    if model is not None and not message_id:
        # A full line refuses before anything is written. (A post with a client id may be a
        # retry, which asks for nothing: reply_request's own check, under the lock, decides.)
        reply_queue_check(user_id=user.pk)
    return _post(
        user=user,
        thread=thread,
        text=text,
        file_ids=file_ids,
        meta=meta,
        message_id=message_id,
        model=model,
        gateway_token=gateway_token,
    )


def _require_content(*, text: str, file_ids: Sequence[str]) -> None:
    if not text.strip() and not file_ids:
        raise Invalid("A message needs text or files.", fields={"text": ["Blank."]})


def _reply_model(
    *, user: User, wants_reply: bool, model_ref: str | None, model: AIModel | None
) -> AIModel | None:
    if not wants_reply:
        return None
    return model if model is not None else model_for_request(user=user, model_ref=model_ref)


def _post_limits_take(*, user: User, reply: bool) -> None:
    # Counted after the checks that need no count (content, model) and before any write, so a
    # refusal leaves no message, no reservation and no queued run.
    rates.user_take(user=user, limit=rates.Limit.POSTS)
    if reply:
        rates.user_take(user=user, limit=rates.Limit.REPLIES)


def _post(
    *,
    user: User,
    thread: Thread,
    text: str,
    file_ids: Sequence[str],
    meta: dict[str, Any] | None,
    message_id: str | None,
    model: AIModel | None,
    gateway_token: str | None,
) -> Posted:
    with transaction.atomic():
        message, created = message_services.message_post(
            thread=thread,
            author=user,
            text=text,
            file_ids=file_ids,
            meta=meta,
            message_id=message_id,
        )
        run = None
        if created and model is not None:
            run = reply_request(
                thread=thread,
                requester=user,
                request_message=message,
                model=model,
                gateway_token=gateway_token,
            )
    return Posted(message=message, created=created, run=run)


def message_regenerate(
    *, user: User, message: Message, gateway_token: str | None = None
) -> AgentRun:
    """Answer the question of the AI reply `message` again, as a new AI message: an AI reply
    like any other, so it counts against the user's reply rate."""
    rates.user_take(user=user, limit=rates.Limit.REPLIES)
    with transaction.atomic():
        return reply_regenerate(message=message, actor=user, gateway_token=gateway_token)


def file_upload(*, user: User, name: str, claimed_type: str, stream: IO[bytes], size: int) -> File:
    """Store `user`'s upload (the first half of a post with an attachment), within the user's
    upload rate: a refused upload stores nothing."""
    rates.user_take(user=user, limit=rates.Limit.UPLOADS)
    return message_services.file_create(
        owner=user, name=name, claimed_type=claimed_type, stream=stream, size=size
    )


def message_revise(*, user: User, message: Message, text: str) -> Message:
    """Edit the caller's own message (its author's right). Saving the same text again is not
    an edit: nothing is written and the message is not marked edited."""
    require_perm(user, Perm.MESSAGE_EDIT)
    message_selectors.require_message_editor(user=user, message=message)
    if not text.strip() and not message.file_ids:
        raise Invalid("A message needs text or files.", fields={"text": ["Blank."]})
    if text == message.text:
        return message
    return message_services.message_edit(message=message, text=text)


def thread_start(
    *,
    user: User,
    title: str = "",
    members: Sequence[User] = (),
    topic_ids: Sequence[str] = (),
    session_prompt: str = "",
    thread_id: str | None = None,
    ai_reply: bool = False,
    topics_as_tags: bool = False,
) -> tuple[Thread, bool]:
    """Start a conversation the caller owns; (thread, created). A retried start with the same
    client id returns the first thread."""
    require_perm(user, Perm.THREAD_CREATE)
    return message_services.thread_create(
        creator=user,
        title=title,
        members=members,
        topic_ids=topic_ids,
        session_prompt=session_prompt,
        thread_id=thread_id,
        ai_reply=ai_reply,
        topics_as_tags=topics_as_tags,
    )


def session_open(
    *, user: User, session_id: str | None, title: str = "", session_prompt: str = ""
) -> tuple[Thread, bool]:
    """The conversation a message goes to, for the protocols that start one with their first
    message: the caller's session `session_id`, or (None) a new one; (thread, created)."""
    if session_id is None:
        return thread_start(user=user, title=title, session_prompt=session_prompt)
    return access_thread(user=user, thread_id=session_id, perm=Perm.MESSAGE_CREATE), False


def session_post(
    *,
    user: User,
    session_id: str | None,
    text: str,
    title: str,
    session_prompt: str = "",
    file_ids: Sequence[str] = (),
    model_ref: str | None = None,
    model: AIModel | None = None,
) -> tuple[Thread, Posted, bool]:
    """Post to the caller's session `session_id` (or, None, to a new one named `title`) and ask
    for the reply; (thread, posted, whether the session is new). A new session and its first
    message are one transaction: a refused message or reply leaves no empty session behind,
    and the rate limits are checked before either is written."""
    _require_content(text=text, file_ids=file_ids)
    model = _reply_model(user=user, wants_reply=True, model_ref=model_ref, model=model)
    _post_limits_take(user=user, reply=True)
    reply_queue_check(user_id=user.pk)
    with transaction.atomic():
        thread, created = session_open(
            user=user, session_id=session_id, title=title, session_prompt=session_prompt
        )
        posted = _post(
            user=user,
            thread=thread,
            text=text,
            file_ids=file_ids,
            meta=None,
            message_id=None,
            model=model,
            gateway_token=None,
        )
    return thread, posted, created


def thread_remove(*, user: User, thread_id: str) -> None:
    """Delete a conversation with everything in it: its owner's (or an admin's) right."""
    thread = access_thread(user=user, thread_id=thread_id, perm=Perm.THREAD_DELETE)
    thread_services.require_owner(thread=thread, actor=user)
    thread_delete(thread=thread)


def history_page(
    *,
    user: User,
    thread_id: str,
    before: int | None = None,
    after: int | None = None,
    limit: int = 50,
) -> tuple[Thread, MessagePage]:
    """A page of a conversation's messages, oldest first (keyset on seq)."""
    thread = access_thread(user=user, thread_id=thread_id, perm=Perm.MESSAGE_VIEW)
    page = message_selectors.message_page(thread=thread, before=before, after=after, limit=limit)
    return thread, page


def history_all(*, user: User, thread_id: str) -> tuple[Thread, list[MessageRow]]:
    """Every message of a conversation, oldest first, for the protocols whose clients expect
    the whole of it in one answer."""
    thread = access_thread(user=user, thread_id=thread_id, perm=Perm.MESSAGE_VIEW)
    return thread, message_selectors.thread_messages(thread=thread)
