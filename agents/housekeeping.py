"""After a reply: a title for an untitled thread, and the rolling summary of older turns.

Both are short calls to the same model, made by the worker once the reply is complete (so they
never delay it). They are platform upkeep and are not charged to the user, but what they used is
recorded in the run's usage (`usage["upkeep"]`), so an operator sees their cost.

Each call is budgeted by the model's context window and output limit, and is not made when it
cannot fit: the summary folds in only the oldest turns that fit (the next reply folds the
next ones). A call that failed is not tried again for that thread for UPKEEP_RETRY_SECONDS, so
a model that cannot do it costs one call, not one per reply. `TITLE_GENERATION` and
`SUMMARY_GENERATION` turn them off.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.cache import cache

from agents.llm import Completion, LLMError, Provider
from agents.models import AgentRun, ThreadSummary
from agents.services.ledger import reply_cost
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
TITLE_MAX_TOKENS = 16
# What the chat template wraps around the two messages, and the rounding of counting them
# apart: kept free so that a prompt counted to fit does fit.
TEMPLATE_MARGIN_TOKENS = 32
# A title needs the gist, not the whole exchange.
TITLE_EXCHANGE_CHARS = 4000


def _failed_key(kind: str, thread_id: str) -> str:
    return f"threadline:upkeep-failed:{kind}:{thread_id}"


def _room(run: AgentRun, provider: Provider, system: str, max_tokens: int) -> int:
    """Tokens left for the content of a side call to the run's model."""
    used = provider.count_tokens(system) + max_tokens + TEMPLATE_MARGIN_TOKENS
    return run.model.context_window - used


def _fit(provider: Provider, text: str, room: int) -> str:
    """The start of `text` that fits in `room` tokens (cut by a quarter until it fits)."""
    while text and provider.count_tokens(text) > room:
        text = text[: len(text) * 3 // 4] if len(text) > 64 else ""
    return text


def _ask(
    *, run: AgentRun, provider: Provider, kind: str, system: str, content: str, max_tokens: int
) -> str | None:
    """One side call, its usage recorded on the run; None if it failed (remembered)."""
    completion = Completion()
    try:
        pieces = provider.stream(
            messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": content},
            ],
            max_tokens=max_tokens,
            completion=completion,
        )
        text = "".join(pieces).strip()
    except LLMError as exc:
        logger.info("no %s for %s: %s", kind, run.thread_id, exc.message)
        cache.set(_failed_key(kind, run.thread_id), exc.message, settings.UPKEEP_RETRY_SECONDS)
        return None
    finally:
        _usage_record(run=run, kind=kind, completion=completion)
    return text


def _usage_record(*, run: AgentRun, kind: str, completion: Completion) -> None:
    usage = completion.usage
    if not usage.prompt_tokens and not usage.completion_tokens:
        return
    cost = reply_cost(
        model=run.model,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
    )
    recorded: dict[str, Any] = dict(run.usage or {})
    upkeep = dict(recorded.get("upkeep") or {})
    upkeep[kind] = {
        "promptTokens": usage.prompt_tokens,
        "completionTokens": usage.completion_tokens,
        "cost": str(cost),
        "charged": False,
    }
    recorded["upkeep"] = upkeep
    run.usage = recorded
    AgentRun.objects.filter(pk=run.pk).update(usage=recorded)


def _skipped(kind: str, run: AgentRun, enabled: bool) -> bool:
    return not enabled or cache.get(_failed_key(kind, run.thread_id)) is not None


def title_if_untitled(*, run: AgentRun, provider: Provider) -> str | None:
    thread = run.thread
    if thread.title != DEFAULT_TITLE or run.request_message is None:
        return None
    if _skipped("title", run, settings.TITLE_GENERATION):
        return None
    room = _room(run, provider, TITLE_PROMPT, TITLE_MAX_TOKENS)
    question = run.request_message.text[: TITLE_EXCHANGE_CHARS // 2]
    exchange = f"User: {question}\nAssistant: {run.message.text}"[:TITLE_EXCHANGE_CHARS]
    exchange = _fit(provider, exchange, room) if room > 0 else ""
    if not exchange:
        return None  # a model too small to be asked anything beside its own limits
    title = _ask(
        run=run,
        provider=provider,
        kind="title",
        system=TITLE_PROMPT,
        content=exchange,
        max_tokens=TITLE_MAX_TOKENS,
    )
    if not title:
        return None
    title = " ".join(title.replace('"', "").replace("\n", " ").split())[:80].rstrip(".")
    if not title:
        return None
    messaging_services.thread_update(thread=thread, title=title)
    return title


def _turn_line(message: Message) -> str:
    return f"{message.author.username if message.author else 'Assistant'}: {message.text}"


def _lines_that_fit(
    provider: Provider, older: Sequence[Message], room: int
) -> tuple[list[str], Message | None]:
    """The oldest turns whose lines fit in `room` tokens, and the last of them; a first turn
    too long on its own is cut to fit, so the summary always moves on."""
    lines: list[str] = []
    last = None
    used = 0
    for message in older:
        line = _turn_line(message)
        tokens = provider.count_tokens(line) + 1
        if used + tokens > room:
            if not lines:
                lines.append(_fit(provider, line, room))
                last = message
            break
        lines.append(line)
        used += tokens
        last = message
    return lines, last


def summary_refresh(*, run: AgentRun, provider: Provider) -> ThreadSummary | None:
    """Fold the turns older than the context window into the summary once they outgrow
    SUMMARY_TRIGGER_TOKENS, as many as one call to the model can take."""
    thread = run.thread
    if _skipped("summary", run, settings.SUMMARY_GENERATION):
        return None  # nothing is read when nothing will be written
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
    if not older:
        return current
    if sum(provider.count_tokens(_turn_line(m)) for m in older) < SUMMARY_TRIGGER_TOKENS:
        return current
    previous = f"Summary so far: {current.text}\n\n" if current else ""
    room = _room(run, provider, SUMMARY_PROMPT, SUMMARY_MAX_TOKENS)
    room -= provider.count_tokens(previous)
    if room <= 0:
        return current  # the summary alone fills the window: nothing more can be folded in
    lines, last = _lines_that_fit(provider, older, room)
    if last is None:
        return current
    text = _ask(
        run=run,
        provider=provider,
        kind="summary",
        system=SUMMARY_PROMPT,
        content=previous + "\n".join(lines),
        max_tokens=SUMMARY_MAX_TOKENS,
    )
    if not text:
        return current
    summary, _ = ThreadSummary.objects.update_or_create(
        thread=thread, defaults={"text": text, "upto_seq": last.seq}
    )
    return summary
