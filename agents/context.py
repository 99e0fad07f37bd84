"""What the model is told: the thread's session prompt, the recent history and the text of the
files attached to the question, trimmed to fit the model's context window."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Callable
from decimal import Decimal

from django.conf import settings

from agents.llm import ChatMessages, Turn
from agents.models import Account, AgentRun, ThreadSummary
from messaging.models import File, Message

logger = logging.getLogger(__name__)

BASE_PROMPT = "You are a helpful assistant taking part in a chat thread. Answer clearly."
FILE_TEXT_LIMIT = 6000  # characters of one attachment
_TEXT_TYPES = {"text/plain", "text/markdown", "text/csv", "application/json"}


def file_text(file: File) -> str | None:
    """The readable text of an attachment (txt, md, csv, json, pdf), or None."""
    try:
        with file.content.open("rb") as handle:
            raw = handle.read(2 * 1024 * 1024)
    except OSError:
        logger.warning("attachment %s is missing from storage", file.pk)
        return None
    if file.content_type in _TEXT_TYPES or file.content_type.startswith("text/"):
        text = raw.decode("utf-8", "replace")
        if file.content_type == "application/json":
            with contextlib.suppress(ValueError):  # show it as it is if it does not parse
                text = json.dumps(json.loads(text), indent=1, ensure_ascii=False)
        return text[:FILE_TEXT_LIMIT]
    if file.content_type == "application/pdf":
        try:
            from pypdf import PdfReader

            reader = PdfReader(io.BytesIO(raw))
            return "\n".join(page.extract_text() or "" for page in reader.pages)[:FILE_TEXT_LIMIT]
        except Exception:  # a broken PDF is the user's file, not our failure
            logger.info("could not read PDF %s", file.pk)
            return None
    return None


def _chat_turn(author_id: str | None, author_name: str | None, text: str) -> dict[str, str]:
    if author_id is None:
        return {"role": "assistant", "content": text}
    return {"role": "user", "content": f"{author_name or 'user'}: {text}"}


def _as_chat(message: Message) -> dict[str, str]:
    return _chat_turn(
        message.author_id, message.author.username if message.author else None, message.text
    )


def build(*, run: AgentRun, count_tokens: Callable[[str], int]) -> ChatMessages:
    """The messages for the model, newest history kept first when trimming is needed."""
    thread = run.thread
    system = BASE_PROMPT
    if thread.session_prompt.strip():
        system += "\n\n" + thread.session_prompt.strip()
    summary = ThreadSummary.objects.filter(thread=thread).values_list("text", flat=True).first()
    if summary:
        system += "\n\nSummary of the earlier conversation:\n" + summary
    # History up to the question: a regenerated reply must not see the answer it replaces.
    upto = run.request_message.seq if run.request_message else run.message.seq - 1
    room = settings.MAX_CHAT_HISTORY_CONTEXT
    # Rows, not model instances: building twenty messages and their authors cost more than
    # the query (measured: 3.7 ms against 1.9 ms on this machine's two cores).
    history = list(
        Message.objects.filter(thread=thread, seq__lte=upto)
        .exclude(text="")
        .exclude(status__in=[Message.Status.FAILED, Message.Status.QUEUED])
        .order_by("-seq")
        .values_list("author_id", "author__username", "text")[: max(room, 0)]
    )
    history.reverse()
    turns = [_chat_turn(*row) for row in history]
    if run.request_message is not None:
        attachments = [
            f"[{file.name}]\n{text}"
            for file in run.request_message.files.all()
            if (text := file_text(file))
        ]
        if attachments:
            system += "\n\nFiles attached to the question:\n\n" + "\n\n".join(attachments)

    budget = run.model.context_window - run.model.max_output_tokens
    messages = [{"role": "system", "content": system}, *turns]
    # Drop the oldest turns (never the question itself) until the prompt fits the window.
    while len(messages) > 2 and sum(count_tokens(m["content"]) + 4 for m in messages) > budget:
        del messages[1]
    if sum(count_tokens(m["content"]) + 4 for m in messages) > budget:
        # Still too long: cut the system text (files first) rather than fail.
        overflow = sum(count_tokens(m["content"]) + 4 for m in messages) - budget
        messages[0]["content"] = messages[0]["content"][: max(200, len(system) - overflow * 4)]
    return messages


def turn(*, run: AgentRun, messages: ChatMessages) -> Turn:
    """The turn as an external agent is told it (the grpc_agent contract): the question, and the
    history `build` chose for the model (so both see the same trimmed window), without the
    system text and the question, which travel in their own fields."""
    thread = run.thread
    question = run.request_message
    history = [dict(m) for m in messages[1:]]
    if question is not None and history and history[-1] == _as_chat(question):
        history.pop()
    summary = ThreadSummary.objects.filter(thread=thread).values_list("text", flat=True).first()
    balance = Account.objects.filter(user_id=run.requested_by_id).values_list(
        "balance", flat=True
    ).first() or Decimal(0)
    # "provider/model" in provider_model names both (e.g. "ollama/llama3.1:8b").
    provider, slash, name = run.model.provider_model.partition("/")
    if not slash:
        provider, name = "", run.model.provider_model
    return Turn(
        user_id=run.requested_by_id or "",
        session_id=thread.pk,
        chat_message=question.text if question is not None else "",
        model_name=name or run.model.name,
        model_provider=provider,
        session_prompt=thread.session_prompt,
        file_names=[file.name for file in question.files.all()] if question is not None else [],
        chat_summary=summary or "",
        chat_history=history,
        # Before this reply's hold: the reservation is ours, not money already spent.
        balance=balance + run.reserved,
    )
