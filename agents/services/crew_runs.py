"""The crew's side of a run: the deployment's crew slots, the crew run itself (its steps and
artifacts as events, its writer streamed like a single model, usage per agent and tool), and the
footer naming what the tools used.

`agents/crew.py` builds the crew and writes nothing; this module runs it and turns its output
into rows and events.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from agents import context
from agents.llm import Completion, LLMError, Usage
from agents.models import AgentMode, AgentRun, AIModel, CrewSlot
from agents.services.artifacts import artifact_save
from agents.services.finish import TERMINAL
from agents.services.ledger import most_a_reply_can_cost, reply_cost
from agents.services.replies import gateway_token_key
from agents.services.streaming import Pacer, Stream, append
from messaging import events
from messaging import services as messaging_services
from messaging.events import EventType
from messaging.models import Message

logger = logging.getLogger(__name__)


CREW_WAIT_SECONDS = 1.0


def crew_slot_take(run: AgentRun) -> bool:
    """Hold one of the deployment's CREW_MAX_CONCURRENCY crew slots for this run. A slot is
    free when nobody holds it, its run has ended, or its run's worker went silent. Call inside
    the claiming transaction."""
    limit = settings.CREW_MAX_CONCURRENCY
    if CrewSlot.objects.filter(number__lt=limit).count() < limit:
        # Made on demand (and again if an operator deleted them), never remembered in the
        # process: the rows themselves are the truth.
        CrewSlot.objects.bulk_create(
            [CrewSlot(number=n) for n in range(limit)], ignore_conflicts=True
        )
    if CrewSlot.objects.filter(run=run, number__lt=limit).exists():
        return True  # a re-run of a run that still holds its slot
    stale_before = timezone.now() - timedelta(seconds=settings.RUN_STALE_SECONDS)
    slot = (
        CrewSlot.objects.select_for_update(skip_locked=True, of=("self",))
        .filter(number__lt=limit)
        .filter(
            Q(run__isnull=True)
            | Q(run__status__in=TERMINAL)
            | Q(run__heartbeat_at__lt=stale_before)
            | Q(run__heartbeat_at__isnull=True, taken_at__lt=stale_before)
        )
        .order_by("number")
        .first()
    )
    if slot is None:
        return False
    CrewSlot.objects.filter(run=run).update(run=None, taken_at=None)
    slot.run = run
    slot.taken_at = timezone.now()
    slot.save(update_fields=["run", "taken_at"])
    return True


def crew_wait_note(run: AgentRun) -> None:
    """Say on the message that the reply waits for a crew, and how many wait before it."""
    ahead = AgentRun.objects.filter(
        mode=AgentMode.CREW, status=AgentRun.Status.QUEUED, created_at__lt=run.created_at
    ).count()
    reason = f"All {settings.CREW_MAX_CONCURRENCY} crews are busy; this reply waits."
    note = {"reason": reason, "ahead": ahead}
    if run.message.meta.get("waiting") != note:
        messaging_services.message_meta_update(message=run.message, meta={"waiting": note})
        _agent_step_record(run=run, agent="crew", step="waiting", detail=reason)


def _agent_step_record(
    *, run: AgentRun, agent: str, step: str, tool: str = "", detail: str = ""
) -> None:
    data: dict[str, Any] = {
        "messageId": run.message_id,
        "runId": run.pk,
        "agent": agent,
        "step": step,
    }
    if tool:
        data["tool"] = tool
    if detail:
        data["detail"] = detail
    with transaction.atomic():
        events.record(thread_id=run.thread_id, type=EventType.AGENT_STEP, data=data)


@dataclass
class CrewOutcome:
    status: str
    error: str
    usage: Usage
    meta: dict[str, Any]


@dataclass
class _CrewLedger:
    """Tokens per agent as the crew spends them (several threads at once)."""

    model: AIModel
    agents: dict[str, dict[str, int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, agent: str, prompt_tokens: int, completion_tokens: int) -> None:
        with self.lock:
            entry = self.agents.setdefault(
                agent, {"promptTokens": 0, "completionTokens": 0, "calls": 0}
            )
            entry["promptTokens"] += prompt_tokens
            entry["completionTokens"] += completion_tokens
            entry["calls"] += 1

    def total(self) -> Usage:
        with self.lock:
            return Usage(
                prompt_tokens=sum(e["promptTokens"] for e in self.agents.values()),
                completion_tokens=sum(e["completionTokens"] for e in self.agents.values()),
            )

    def spent(self) -> Decimal:
        usage = self.total()
        return reply_cost(
            model=self.model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )

    def breakdown(self) -> dict[str, Any]:
        with self.lock:
            return {
                name: {
                    **entry,
                    # Each agent's share, rounded on its own: the run's cost (charged) is
                    # computed from the total tokens, so shares may differ by a micro-unit.
                    "cost": str(
                        reply_cost(
                            model=self.model,
                            prompt_tokens=entry["promptTokens"],
                            completion_tokens=entry["completionTokens"],
                        )
                    ),
                }
                for name, entry in self.agents.items()
            }


def _conversation_text(run: AgentRun, provider: Any) -> tuple[str, str]:
    """(the conversation before the question, the question) as plain text for the crew."""
    messages = context.build(run=run, count_tokens=provider.count_tokens)
    question = ""
    if run.request_message is not None:
        question = run.request_message.text
    lines = []
    for message in messages[1:]:
        lines.append(f"{message['role']}: {message['content']}")
    if messages and messages[0]["content"]:
        lines.insert(0, f"(context) {messages[0]['content']}")
    return "\n".join(lines[-40:]), question or (messages[-1]["content"] if messages else "")


def crew_execute(*, run: AgentRun, stream: Stream, provider: Any, started: float) -> CrewOutcome:
    """Run the crew for one reply: its steps and artifacts become events as they happen, the
    writer's answer streams like a single model's, usage is counted per agent and per tool."""
    from agents import crew
    from agents.tools import CrewStopped, ToolContext

    owner = threading.get_ident()
    ledger = _CrewLedger(model=run.model)
    window = settings.STREAM_FLUSH_MS / 1000
    pacer = Pacer(stream, window=window)
    artifacts: list[dict[str, Any]] = []

    def own_connection_closed() -> None:
        if threading.get_ident() != owner:
            from django.db import connection

            connection.close()

    def should_stop() -> str | None:
        if pacer.cancelled.is_set():
            return "Stopped."
        if time.monotonic() - started > settings.RUN_TIME_LIMIT_SECONDS:
            return "The reply took too long and was stopped."
        return None

    def before_call(agent: str) -> str | None:
        if ledger.spent() + most_a_reply_can_cost(run.model) > run.reserved:
            return "This reply reached the most it may cost and was stopped."
        # Tokens too, for token budgets (and free models, whose cost never stops them).
        usage = ledger.total()
        used = usage.prompt_tokens + usage.completion_tokens
        if run.reserved_tokens and used + run.model.context_window > run.reserved_tokens:
            return "This reply reached the most tokens it may use and was stopped."
        return None

    def step(*, agent: str, step: str, tool: str = "", detail: str = "") -> None:
        try:
            _agent_step_record(run=run, agent=agent, step=step, tool=tool, detail=detail)
        finally:
            own_connection_closed()

    def save(**kwargs: Any) -> dict[str, Any]:
        from agents.wire import artifact_json

        try:
            artifact = artifact_save(run=run, **kwargs)
        finally:
            own_connection_closed()
        summary = artifact_json(artifact)
        artifacts.append(summary)
        return summary

    def text(piece: str) -> None:
        append(stream, pacer, window, piece)

    def track(completion: Completion, active: bool) -> None:
        with stream.lock:
            if active:
                stream.crew_calls[id(completion)] = completion
            else:
                stream.crew_calls.pop(id(completion), None)

    hooks = crew.CrewHooks(
        step=step,
        text=text,
        usage=ledger.add,
        should_stop=should_stop,
        before_call=before_call,
        track=track,
    )
    gateway_token = cache.get(gateway_token_key(run.pk)) if settings.GATEWAY_URL else None
    tool_context = ToolContext(
        user=run.requested_by,  # type: ignore[arg-type]
        thread=run.thread,
        question_file_ids=run.request_message.file_ids if run.request_message else [],
        gateway_token=gateway_token,
        save_artifact=save,
        step=step,
        should_stop=should_stop,
        max_tool_calls=settings.CREW_MAX_TOOL_CALLS,
    )

    def llm_for(agent: str, streams_answer: bool) -> crew.ProviderLLM:
        return crew.ProviderLLM(
            model=run.model.provider_model or run.model.name,
            agent_name=agent,
            threadline_provider=provider,
            hooks=hooks,
            output_tokens=run.model.max_output_tokens,
            context_window=run.model.context_window,
            streams_answer=streams_answer,
        )

    status, error = AgentRun.Status.COMPLETE, ""
    result: Any = None
    pacer.start()
    try:
        if run.requested_by is None:
            raise CrewStopped("The person who asked no longer exists.")
        conversation, question = _conversation_text(run, provider)
        file_names = list(
            Message.files.through.objects.filter(message__thread=run.thread)
            .values_list("file__name", flat=True)
            .distinct()[:50]
        )
        result = crew.run(
            question=question,
            conversation=conversation,
            file_names=file_names,
            llm_for=llm_for,
            tool_context=tool_context,
            hooks=hooks,
            max_steps=settings.CREW_MAX_STEPS,
            time_limit=settings.RUN_TIME_LIMIT_SECONDS,
        )
    except Exception as exc:
        reason = _stop_reason(exc)
        if pacer.cancelled.is_set():
            status = AgentRun.Status.CANCELLED
        elif reason:
            status, error = AgentRun.Status.FAILED, reason
        elif isinstance(exc, LLMError):
            status, error = AgentRun.Status.FAILED, exc.message
        else:
            logger.exception("crew of run %s failed", run.pk)
            status, error = AgentRun.Status.FAILED, "The crew failed because of an internal error."
    finally:
        pacer.stop()
    if status == AgentRun.Status.COMPLETE and pacer.cancelled.is_set():
        status = AgentRun.Status.CANCELLED  # stop pressed as the writer finished
    if result is not None:
        _answer_settle(stream, result.answer)
    sources = list(tool_context.sources.values())
    footer = _crew_footer(sources, artifacts)
    if footer and stream.text.strip():
        append(stream, pacer, 0, footer)
    breakdown = {"agents": ledger.breakdown(), "tools": tool_context.usage}
    meta: dict[str, Any] = {
        "usage": breakdown,
        "artifacts": [{"id": a["id"], "kind": a["kind"], "title": a["title"]} for a in artifacts],
        "sources": sources,
    }
    if result is not None:
        meta["plan"] = result.plan
    return CrewOutcome(status=status, error=error, usage=ledger.total(), meta=meta)


def _stop_reason(exc: BaseException) -> str | None:
    """The reason of a CrewStopped, also when CrewAI wrapped it in its own exception."""
    from agents.tools import CrewStopped

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, CrewStopped):
            return current.reason
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _answer_settle(stream: Stream, answer: str) -> None:
    """Make the streamed text the crew's final answer. Usually the writer streamed all of it;
    when CrewAI retried or reformatted, what was streamed is replaced (clients take the final
    text from chatMessageCompleted)."""
    with stream.lock:
        streamed = stream.text
        if not answer or answer == streamed.strip():
            return
        if answer.startswith(streamed):
            stream.parts = [streamed, answer[len(streamed) :]]
        else:
            # A delta at offset 0 replaces what clients hold.
            stream.parts = [answer]
            stream.sent = 0
        stream.written = len(stream.text)
        if stream.batch_started is None:
            stream.batch_started = time.monotonic()


def _crew_footer(sources: list[dict[str, Any]], artifacts: list[dict[str, Any]]) -> str:
    """Sources and artifacts named at the end of the answer, from what the tools really used
    (a small model's writer may forget to cite)."""
    lines = []
    if sources:
        cited = []
        for source in sources[:10]:
            if source["kind"] == "message":
                cited.append(f"message {source['id']}")
            elif source["kind"] == "file":
                cited.append(f"file {source['name']}")
            else:
                cited.append(f"gateway {source['resource']}")
        lines.append("Sources: " + "; ".join(cited))
    if artifacts:
        lines.append(
            "Artifacts: " + "; ".join(f"{a['title']} ({a['kind']})" for a in artifacts[:10])
        )
    return ("\n\n" + "\n".join(lines)) if lines else ""
