"""The AI participant: asking for a reply, producing it in a worker, stopping it, paying for it.

A reply is an AI message (author empty, `meta.modelId` / `meta.platformId`) plus an AgentRun.
`reply_request` makes both inside the asker's transaction and reserves the most the reply can
cost; a Celery worker runs `run_execute`, which streams the model's text as transient
`chatMessageDelta` events, saves the partial text every STREAM_SAVE_MS, and finishes in one
transaction: final text and status, usage, the ledger settled to the real token count, and a
`chatMessageCompleted` event. Every step is idempotent per run, so a redelivered task never
charges twice; a run whose worker vanished is re-run once or failed by `runs_reap_stale`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents import context, housekeeping
from agents.llm import Completion, LLMError, get_provider, open_stream
from agents.models import Account, AgentRun, AIModel, LedgerEntry
from messaging import events
from messaging import services as messaging_services
from messaging.events import EventType
from messaging.livetext import live_text_drop, live_text_set
from messaging.models import Message
from threads.errors import Conflict, Forbidden, NotFound
from threads.models import Thread, User
from threads.selectors import is_thread_owner

logger = logging.getLogger(__name__)

MICRO = Decimal("0.000001")
MAX_ATTEMPTS = 2
TERMINAL = {AgentRun.Status.COMPLETE, AgentRun.Status.FAILED, AgentRun.Status.CANCELLED}
_MESSAGE_STATUS: dict[str, str] = {
    AgentRun.Status.COMPLETE: Message.Status.COMPLETE,
    AgentRun.Status.FAILED: Message.Status.FAILED,
    AgentRun.Status.CANCELLED: Message.Status.CANCELLED,
}


# --- money -----------------------------------------------------------------------------------


def account_lock(*, user: User) -> Account:
    """The user's account, locked for this transaction; made with the starting credit on first
    use. Call inside a transaction."""
    account = Account.objects.select_for_update().filter(user=user).first()
    if account is not None:
        return account
    try:
        with transaction.atomic():
            account = Account.objects.create(user=user)
            starting = Decimal(settings.STARTING_BALANCE)
            if starting:
                _ledger_add(
                    account=account,
                    amount=starting,
                    kind=LedgerEntry.Kind.CREDIT,
                    note="starting balance",
                )
    except IntegrityError:
        pass  # made by a concurrent request; lock theirs
    return Account.objects.select_for_update().get(user=user)


def _ledger_add(
    *, account: Account, amount: Decimal, kind: str, run: AgentRun | None = None, note: str = ""
) -> LedgerEntry:
    """One ledger entry and the matching balance change, on a locked account."""
    entry = LedgerEntry.objects.create(
        account=account, amount=amount, kind=kind, run=run, note=note
    )
    account.balance += amount
    account.save(update_fields=["balance", "updated_at"])
    return entry


def credit_add(*, user: User, amount: Decimal, note: str = "") -> LedgerEntry:
    with transaction.atomic():
        account = account_lock(user=user)
        return _ledger_add(account=account, amount=amount, kind=LedgerEntry.Kind.CREDIT, note=note)


def reply_cost(*, model: AIModel, prompt_tokens: int, completion_tokens: int) -> Decimal:
    cost = (
        Decimal(prompt_tokens) * model.price_input_per_1k
        + Decimal(completion_tokens) * model.price_output_per_1k
    ) / 1000
    return cost.quantize(MICRO, rounding=ROUND_HALF_UP)


def most_a_reply_can_cost(model: AIModel) -> Decimal:
    """The reservation: the model's own `reserve_per_reply` if set (agents that price their own
    work), else a full context window in and the output limit out."""
    if model.reserve_per_reply is not None:
        return model.reserve_per_reply
    return reply_cost(
        model=model,
        prompt_tokens=max(model.context_window - model.max_output_tokens, 0),
        completion_tokens=model.max_output_tokens,
    )


def _settle(*, run: AgentRun, cost: Decimal) -> Decimal:
    """Give back what the reservation held beyond `cost`; once per run. Returns the charge."""
    charge = min(cost, run.reserved)  # the reservation is the most we ever take
    if run.requested_by is None:
        return charge
    account = account_lock(user=run.requested_by)
    if LedgerEntry.objects.filter(run=run, kind=LedgerEntry.Kind.SETTLE).exists():
        return charge
    _ledger_add(
        account=account,
        amount=run.reserved - charge,
        kind=LedgerEntry.Kind.SETTLE,
        run=run,
        note=f"{run.prompt_tokens} + {run.completion_tokens} tokens",
    )
    return charge


# --- asking ------------------------------------------------------------------------------------


def reply_request(
    *, thread: Thread, requester: User, request_message: Message | None, model: AIModel
) -> AgentRun:
    """Create the queued AI message and its run, reserve the money, queue the worker on commit.

    Call inside the transaction that stored the question: a refusal (403 for a balance at or
    below zero or below what the reply may cost) rolls the question back with it, and no model
    is called.
    """
    reserve = most_a_reply_can_cost(model)
    account = account_lock(user=requester)
    if account.balance <= 0 or account.balance < reserve:
        raise Forbidden(
            f"Your balance ({account.balance.quantize(Decimal('0.01'))}) is too low for "
            f"{model.name}."
        )
    message, _ = messaging_services.message_post(
        thread=thread,
        author=None,
        text="",
        status=Message.Status.QUEUED,
        meta={"modelId": model.pk, "platformId": model.provider, "model": model.name},
    )
    run = AgentRun.objects.create(
        thread=thread,
        message=message,
        request_message=request_message,
        requested_by=requester,
        model=model,
        reserved=reserve,
    )
    _ledger_add(
        account=account,
        amount=-reserve,
        kind=LedgerEntry.Kind.RESERVE,
        run=run,
        note=f"reply with {model.name}",
    )
    run_id = run.pk
    transaction.on_commit(lambda: _enqueue(run_id))
    return run


def _enqueue(run_id: str) -> None:
    from agents.tasks import run_agent

    run_agent.delay(run_id)


def reply_regenerate(*, message: Message, actor: User) -> AgentRun:
    """A new reply to the question an AI message answered. Call inside a transaction."""
    run = (
        AgentRun.objects.select_related("model", "request_message").filter(message=message).first()
    )
    if run is None:
        raise Conflict("Only AI replies can be regenerated.")
    if run.status not in TERMINAL:
        raise Conflict("This reply is still being written; stop it first.")
    return reply_request(
        thread=message.thread,
        requester=actor,
        request_message=run.request_message,
        model=run.model,
    )


def run_stop(*, message: Message, actor: User) -> AgentRun:
    """Ask the worker to stop. A run that has not started is cancelled here and now; a running
    one is stopped by its worker at its next check (every STREAM_SAVE_MS).

    Only the asker, the thread's owner or an admin may; anyone else gets the same 404 as for a
    message that does not exist."""
    with transaction.atomic():
        run = AgentRun.objects.select_for_update(of=("self",)).filter(message=message).first()
        if run is None:
            raise NotFound("Message not found.")
        allowed = (
            actor.is_admin
            or run.requested_by_id == actor.pk
            or is_thread_owner(thread=message.thread, user=actor)
        )
        if not allowed:
            raise NotFound("Message not found.")
        if run.status in TERMINAL:
            return run
        run.cancel_requested = True
        run.save(update_fields=["cancel_requested"])
        if run.status == AgentRun.Status.QUEUED:
            _finish(run=run, text="", status=AgentRun.Status.CANCELLED)
    return run


# --- producing (in the worker) -------------------------------------------------------------------


@dataclass
class _Stream:
    """The reply as it grows, and what has been sent and saved of it."""

    run: AgentRun
    parts: list[str] = field(default_factory=list)
    written: int = 0  # characters appended, by the thread reading the model
    sent: int = 0  # characters announced in deltas
    saved: int = 0  # characters saved to the database
    seq: int = 0
    # When the oldest text not yet sent arrived (None: all sent).
    batch_started: float | None = None
    # Flushes come from the pacer thread and, at the end, from the worker's own.
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def text(self) -> str:
        return "".join(self.parts)


def _claim(run_id: str) -> AgentRun | None:
    """Take the run for this worker, or None if it is finished or alive elsewhere."""
    stale_before = timezone.now() - timedelta(seconds=settings.RUN_STALE_SECONDS)
    with transaction.atomic():
        run = (
            AgentRun.objects.select_for_update(of=("self",))
            .select_related("model", "thread", "message", "request_message", "requested_by")
            .filter(pk=run_id)
            .first()
        )
        if run is None or run.status in TERMINAL:
            return None
        if (
            run.status == AgentRun.Status.RUNNING
            and run.heartbeat_at is not None
            and run.heartbeat_at > stale_before
        ):
            return None  # another worker holds it and is alive
        if run.cancel_requested:
            _finish(run=run, text=run.message.text, status=AgentRun.Status.CANCELLED)
            return None
        now = timezone.now()
        run.status = AgentRun.Status.RUNNING
        run.attempts += 1
        run.started_at = run.started_at or now
        run.heartbeat_at = now
        run.save(update_fields=["status", "attempts", "started_at", "heartbeat_at"])
        messaging_services.message_set_status(
            message=run.message, status=Message.Status.STREAMING, text=""
        )
        live_text_set(message_id=run.message_id, text="")
    return run


def run_execute(*, run_id: str) -> None:
    """Produce one reply. Safe to call again for the same run (redelivery, retries)."""
    run = _claim(run_id)
    if run is None:
        return
    stream = _Stream(run=run, seq=run.thread.last_event_seq)
    completion = Completion()
    status, error = AgentRun.Status.COMPLETE, ""
    started = time.monotonic()
    try:
        provider = get_provider(run.model)
        for attempt in range(2):
            try:
                messages = context.build(run=run, count_tokens=provider.count_tokens)
                cancelled = _pump(
                    stream,
                    open_stream(
                        provider,
                        messages=messages,
                        max_tokens=run.model.max_output_tokens,
                        completion=completion,
                        turn=functools.partial(context.turn, run=run, messages=messages),
                    ),
                    started,
                )
                if cancelled:
                    status = AgentRun.Status.CANCELLED
                break
            except LLMError as exc:
                # Retry only when nothing reached anyone yet; otherwise the text would fork.
                if attempt == 0 and exc.retryable and not stream.parts:
                    logger.info("retrying run %s after: %s", run.pk, exc.message)
                    continue
                raise
    except LLMError as exc:
        status, error = AgentRun.Status.FAILED, exc.message
    except Exception:
        logger.exception("run %s failed", run.pk)
        status, error = AgentRun.Status.FAILED, "The reply failed because of an internal error."
    _flush(stream)
    with transaction.atomic():
        locked = (
            AgentRun.objects.select_for_update(of=("self",))
            .select_related("model", "message", "requested_by", "thread")
            .get(pk=run.pk)
        )
        if locked.status in TERMINAL:
            return  # the reaper or a stop already ended it
        locked.prompt_tokens = completion.usage.prompt_tokens
        locked.completion_tokens = completion.usage.completion_tokens
        _finish(
            run=locked,
            text=stream.text,
            status=status,
            error=error,
            reported_cost=completion.cost,
        )
    if status == AgentRun.Status.COMPLETE:
        _upkeep(locked, provider)


def _upkeep(run: AgentRun, provider: Any) -> None:
    """Title and summary after a finished reply; a failure here never touches the reply."""
    try:
        housekeeping.title_if_untitled(run=run, provider=provider)
        housekeeping.summary_refresh(run=run, provider=provider)
    except Exception:
        logger.exception("upkeep after run %s failed", run.pk)


def _pump(stream: _Stream, pieces: Any, started: float) -> bool:
    """Read the model into the stream; True if the user pressed stop. The pacer thread sends,
    saves and watches meanwhile, so a stalled model neither delays text already written nor
    hides the run's pulse."""
    window = settings.STREAM_FLUSH_MS / 1000
    pacer = _Pacer(stream, window=window)
    pacer.start()
    try:
        for piece in pieces:
            with stream.lock:
                stream.parts.append(piece)
                stream.written += len(piece)
                opens_batch = stream.batch_started is None
                if opens_batch:
                    stream.batch_started = time.monotonic()
            if window == 0 or stream.sent == 0:
                # Batching off, or the reply's first words: out at once (time to first token).
                _flush(stream)
            elif opens_batch:
                pacer.wake.set()
            if pacer.cancelled.is_set():
                return True
            if time.monotonic() - started > settings.RUN_TIME_LIMIT_SECONDS:
                raise LLMError("The reply took too long and was stopped.")
        return pacer.cancelled.is_set()
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()  # stops the model generating
        pacer.stop()


class _Pacer(threading.Thread):
    """Beside a running reply: sends each batch of text when it is `window` old, saves the
    partial text and the heartbeat every so often, and notices a stop request. It sleeps until
    one of those is due, so an idle or slow reply costs nothing."""

    HEARTBEAT_EVERY = 1.0

    def __init__(self, stream: _Stream, *, window: float) -> None:
        super().__init__(name=f"pacer-{stream.run.pk}", daemon=True)
        self.stream = stream
        self.window = window
        self.wake = threading.Event()
        self.cancelled = threading.Event()
        self._done = False

    def stop(self) -> None:
        self._done = True
        self.wake.set()
        self.join(timeout=5)

    def run(self) -> None:
        from django.db import connection

        save_every = max(min(settings.STREAM_SAVE_MS / 1000, self.HEARTBEAT_EVERY), 0.01)
        next_save = time.monotonic() + save_every
        try:
            while not self._done:
                now = time.monotonic()
                due = next_save
                batch_started = self.stream.batch_started
                if batch_started is not None and self.window:
                    due = min(due, batch_started + self.window)
                if due > now:
                    self.wake.wait(due - now)
                    self.wake.clear()
                    continue
                try:
                    batch_started = self.stream.batch_started
                    if (
                        batch_started is not None
                        and self.window
                        and now >= batch_started + self.window
                    ):
                        _flush(self.stream)
                    if now >= next_save:
                        next_save = now + save_every
                        if _save_progress(self.stream):
                            self.cancelled.set()
                except Exception:
                    # A busy database or a lost Redis connection for a moment must not end
                    # the pulse of the reply; the next round tries again.
                    logger.exception("pacer of run %s: a round failed", self.stream.run.pk)
        finally:
            connection.close()


def _flush(stream: _Stream) -> None:
    with stream.lock:
        text = stream.text
        if len(text) == stream.sent:
            return
        stream.batch_started = None
        # Readable before it is announced: a client that fetches the message after
        # subscribing then holds every character of the deltas it did not receive.
        live_text_set(message_id=stream.run.message_id, text=text)
        events.publish_transient(
            thread_id=stream.run.thread_id,
            type=EventType.MESSAGE_DELTA,
            data={
                "messageId": stream.run.message_id,
                "offset": stream.sent,
                "text": text[stream.sent :],
            },
            seq=stream.seq,
        )
        stream.sent = len(text)


def _save_progress(stream: _Stream) -> bool:
    """Save the partial text and the heartbeat; return whether stop was asked for."""
    text = stream.text
    now = timezone.now()
    if len(text) != stream.saved:
        Message.objects.filter(pk=stream.run.message_id).update(text=text, updated_at=now)
        stream.saved = len(text)
    AgentRun.objects.filter(pk=stream.run.pk).update(heartbeat_at=now)
    seq = Thread.objects.filter(pk=stream.run.thread_id).values_list("last_event_seq", flat=True)
    stream.seq = seq.first() or stream.seq
    return bool(
        AgentRun.objects.filter(pk=stream.run.pk).values_list("cancel_requested", flat=True).get()
    )


def _finish(
    *,
    run: AgentRun,
    text: str,
    status: str,
    error: str = "",
    reported_cost: Decimal | None = None,
) -> None:
    """End a run in the caller's transaction: message, usage, money, event.

    `reported_cost` is what a provider that prices its own work (an external agent) said the
    reply cost; it replaces the token price. Either way the charge goes through `_settle`, so
    the reservation caps it: an agent that reports more than was held is charged what was held,
    and the message's usage shows both (`cost` charged, `reportedCost` claimed)."""
    now = timezone.now()
    if reported_cost is not None:
        cost = reported_cost
    else:
        cost = reply_cost(
            model=run.model,
            prompt_tokens=run.prompt_tokens,
            completion_tokens=run.completion_tokens,
        )
    run.cost = _settle(run=run, cost=cost)
    if cost > run.cost:
        logger.warning(
            "run %s: cost %s is above the reservation %s; charged %s",
            run.pk,
            cost,
            run.reserved,
            run.cost,
        )
    run.status = status
    run.error = error
    run.finished_at = now
    run.save(
        update_fields=[
            "status",
            "error",
            "finished_at",
            "cost",
            "prompt_tokens",
            "completion_tokens",
        ]
    )
    usage = {
        "promptTokens": run.prompt_tokens,
        "completionTokens": run.completion_tokens,
        "cost": str(run.cost),
    }
    if cost > run.cost:
        usage["reportedCost"] = str(cost)
    meta: dict[str, Any] = {"usage": usage}
    if error:
        meta["error"] = error
    messaging_services.message_complete(
        message=run.message, text=text, status=_MESSAGE_STATUS[status], meta=meta, usage=usage
    )
    transaction.on_commit(functools.partial(live_text_drop, message_id=run.message_id))


# --- workers that vanish ---------------------------------------------------------------------


def runs_reap_stale() -> int:
    """Runs whose worker stopped sending heartbeats: run again once, then fail. Returns how many
    were handled. Safe to run in many processes at once (rows are locked, skipped if busy)."""
    stale_before = timezone.now() - timedelta(seconds=settings.RUN_STALE_SECONDS)
    handled = 0
    candidates = list(
        AgentRun.objects.filter(
            status=AgentRun.Status.RUNNING, heartbeat_at__lt=stale_before
        ).values_list("pk", flat=True)[:100]
    )
    for run_id in candidates:
        with transaction.atomic():
            run = (
                AgentRun.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("model", "message", "requested_by", "thread")
                .filter(pk=run_id, status=AgentRun.Status.RUNNING, heartbeat_at__lt=stale_before)
                .first()
            )
            if run is None:
                continue
            handled += 1
            if run.attempts < MAX_ATTEMPTS and not run.cancel_requested:
                run.status = AgentRun.Status.QUEUED
                run.heartbeat_at = None
                run.save(update_fields=["status", "heartbeat_at"])
                messaging_services.message_set_status(
                    message=run.message, status=Message.Status.QUEUED, text=""
                )
                transaction.on_commit(functools.partial(_enqueue, run.pk))
            else:
                _finish(
                    run=run,
                    text=run.message.text,
                    status=AgentRun.Status.FAILED,
                    error="The worker writing this reply stopped; please try again.",
                )
    return handled
