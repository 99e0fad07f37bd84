"""After a reply: a title for an untitled thread, and the rolling summary of older turns.

Both are short calls to the same model, made by the worker once the reply is complete (so they
never delay it). They are platform upkeep and are not charged to the user.
"""

from __future__ import annotations

import logging

from django.conf import settings

from agents.llm import Completion, LLMError, Provider
from agents.models import AgentRun, ThreadSummary
from messaging import services as messaging_services
from messaging.models import Message

logger = logging.getLogger(__name__)

DEFAULT_TITLE = "New chat"
TITLE_PROMPT = (
    "Write a short title, at most six words, for the conversation below. "
    "Reply with the title only, no quotes."
)
SUMMARY_PROMPT = (
    "Summarise the conversation below in a few sentences, keeping names, numbers, decisions "
    "and open questions. Reply with the summary only."
)
# Summarise once the turns that fell out of the context window hold this many tokens.
SUMMARY_TRIGGER_TOKENS = 300
SUMMARY_MAX_TOKENS = 200


def _ask(provider: Provider, system: str, content: str, max_tokens: int) -> str:
    pieces = provider.stream(
        messages=[{"role": "system", "content": system}, {"role": "user", "content": content}],
        max_tokens=max_tokens,
        completion=Completion(),
    )
    return "".join(pieces).strip()


def title_if_untitled(*, run: AgentRun, provider: Provider) -> str | None:
    thread = run.thread
    if thread.title != DEFAULT_TITLE or run.request_message is None:
        return None
    exchange = f"User: {run.request_message.text}\nAssistant: {run.message.text}"
    try:
        title = _ask(provider, TITLE_PROMPT, exchange[:4000], 16)
    except LLMError as exc:
        logger.info("no title for %s: %s", thread.pk, exc.message)
        return None
    title = " ".join(title.replace('"', "").replace("\n", " ").split())[:80].rstrip(".")
    if not title:
        return None
    messaging_services.thread_update(thread=thread, title=title)
    return title


def summary_refresh(*, run: AgentRun, provider: Provider) -> ThreadSummary | None:
    """Fold the turns older than the context window into the summary once they outgrow
    SUMMARY_TRIGGER_TOKENS."""
    thread = run.thread
    current = ThreadSummary.objects.filter(thread=thread).first()
    after = current.upto_seq if current else 0
    window_start = (
        Message.objects.filter(thread=thread, status=Message.Status.COMPLETE)
        .order_by("-seq")
        .values_list("seq", flat=True)[
            settings.MAX_CHAT_HISTORY_CONTEXT - 1 : settings.MAX_CHAT_HISTORY_CONTEXT
        ]
    )
    first_in_window = window_start.first()
    if first_in_window is None:
        return current
    older = list(
        Message.objects.filter(
            thread=thread, seq__gt=after, seq__lt=first_in_window, status=Message.Status.COMPLETE
        )
        .exclude(text="")
        .select_related("author")
        .order_by("seq")
    )
    lines = [f"{m.author.username if m.author else 'Assistant'}: {m.text}" for m in older]
    if not older or sum(provider.count_tokens(line) for line in lines) < SUMMARY_TRIGGER_TOKENS:
        return current
    previous = f"Summary so far: {current.text}\n\n" if current else ""
    try:
        text = _ask(
            provider, SUMMARY_PROMPT, (previous + "\n".join(lines))[-12000:], SUMMARY_MAX_TOKENS
        )
    except LLMError as exc:
        logger.info("no summary for %s: %s", thread.pk, exc.message)
        return current
    if not text:
        return current
    summary, _ = ThreadSummary.objects.update_or_create(
        thread=thread, defaults={"text": text, "upto_seq": older[-1].seq}
    )
    return summary
