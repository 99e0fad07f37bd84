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
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from agents import context, housekeeping
from agents.llm import (
    Completion,
    LLMError,
    Usage,
    get_provider,
    open_stream,
)
from agents.models import Account, AgentMode, AgentRun, AIModel, Artifact, CrewSlot, LedgerEntry
from messaging import events
from messaging import services as messaging_services
from messaging.events import EventType
from messaging.livetext import live_text_drop, live_text_set
from messaging.models import Message
from messaging.storage import objects_delete_on_commit
from threads.errors import Conflict, Forbidden, NotFound
from threads.ids import new_run_id
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


def _balance_take(*, user: User, amount: Decimal) -> int | None:
    """Take `amount` from the user's balance if it is above zero and covers it; the account's
    id, or None (no account yet, or too low: nothing changed). One locking UPDATE where
    account_lock + save took two round trips; PostgreSQL re-checks the condition on the row
    version it locks, so concurrent requests cannot overdraw. Call inside a transaction and
    add the ledger entry in it."""
    field = Account._meta.get_field("balance")
    table = connection.ops.quote_name(Account._meta.db_table)
    value = connection.ops.adapt_decimalfield_value(
        amount,
        field.max_digits,
        field.decimal_places,
    )
    sql = (
        f"UPDATE {table} SET balance = balance - %s, updated_at = %s"  # noqa: S608 - model names
        " WHERE user_id = %s AND balance > 0 AND balance >= %s RETURNING id"
    )
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(sql, [value, now, user.pk, value])
        row = cursor.fetchone()
    return None if row is None else int(row[0])


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


def agent_mode_for(*, thread: Thread, model: AIModel) -> str:
    """crew or core: the thread's setting, else the model's, else the deployment's; `auto`
    means the crew when the model can call tools (so the bundled small model stays fast)."""
    mode = thread.agent_mode or model.agent_mode or settings.AGENT_MODE
    if mode == AgentMode.AUTO:
        mode = AgentMode.CREW if model.supports_tools else AgentMode.CORE
    return str(mode)


# A crew makes several model calls (planner, specialists' steps, writer); its reservation
# covers this many full calls, and the crew stops before a call that could exceed it.
CREW_RESERVED_CALLS = 8


def reply_request(
    *,
    thread: Thread,
    requester: User,
    request_message: Message | None,
    model: AIModel,
    gateway_token: str | None = None,
) -> AgentRun:
    """Create the queued AI message and its run, reserve the money, queue the worker on commit.

    Call inside the transaction that stored the question: a refusal (403 for a balance at or
    below zero or below what the reply may cost) rolls the question back with it, and no model
    is called. `gateway_token` is the asker's bearer token, forwarded by the crew's gateway tool
    and kept only in the cache for the run's lifetime (never in the database).
    """
    mode = agent_mode_for(thread=thread, model=model)
    reserve = most_a_reply_can_cost(model)
    if mode == AgentMode.CREW:
        reserve *= CREW_RESERVED_CALLS
    account_id = _balance_take(user=requester, amount=reserve)
    if account_id is None:
        # No account yet (made here with the starting credit), or a balance too low.
        account = account_lock(user=requester)
        if account.balance <= 0 or account.balance < reserve:
            raise Forbidden(
                f"Your balance ({account.balance.quantize(Decimal('0.01'))}) is too low for "
                f"{model.name}."
            )
        account.balance -= reserve
        account.save(update_fields=["balance", "updated_at"])
        account_id = account.pk
    run_id = new_run_id()
    message, _ = messaging_services.message_post(
        thread=thread,
        author=None,
        text="",
        status=Message.Status.QUEUED,
        meta={
            "modelId": model.pk,
            "platformId": model.provider,
            "model": model.name,
            "mode": mode,
        },
    )
    run = AgentRun.objects.create(
        id=run_id,
        thread=thread,
        message=message,
        request_message=request_message,
        requested_by=requester,
        model=model,
        mode=mode,
        reserved=reserve,
    )
    # The balance already moved (above); this is its entry.
    LedgerEntry.objects.create(
        account_id=account_id,
        amount=-reserve,
        kind=LedgerEntry.Kind.RESERVE,
        run=run,
        note=f"reply with {model.name}",
    )
    if gateway_token and settings.GATEWAY_URL and mode == AgentMode.CREW:
        token_key = _gateway_token_key(run_id)
        timeout = settings.RUN_TIME_LIMIT_SECONDS * 2 + 600
        transaction.on_commit(lambda: cache.set(token_key, gateway_token, timeout=timeout))
    transaction.on_commit(lambda: _enqueue(run_id, crew=mode == AgentMode.CREW))
    return run


def _gateway_token_key(run_id: str) -> str:
    return f"threadline:run-gateway-token:{run_id}"


def _enqueue(run_id: str, *, crew: bool = False, countdown: float = 0) -> None:
    from agents.tasks import run_agent

    queue = settings.CREW_QUEUE if crew else None
    run_agent.apply_async(args=(run_id,), queue=queue, countdown=countdown or None)


def reply_regenerate(
    *, message: Message, actor: User, gateway_token: str | None = None
) -> AgentRun:
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
        gateway_token=gateway_token,
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
    # The model call in progress (its `abort` cuts a stalled stream when stop is pressed);
    # a crew has several, by id.
    completion: Completion | None = None
    crew_calls: dict[int, Completion] = field(default_factory=dict)
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


class _Wait:
    """The run must wait for a free crew slot."""


WAIT = _Wait()


def _claim(run_id: str) -> AgentRun | _Wait | None:
    """Take the run for this worker; None if it is finished or alive elsewhere, WAIT if it is a
    crew and every crew slot is busy."""
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
        if run.mode == AgentMode.CREW and not _crew_slot_take(run):
            _crew_wait_note(run)
            return WAIT
        now = timezone.now()
        run.status = AgentRun.Status.RUNNING
        run.attempts += 1
        run.started_at = run.started_at or now
        run.heartbeat_at = now
        run.save(update_fields=["status", "attempts", "started_at", "heartbeat_at"])
        run.message._file_ids = []  # an AI reply has no attachments: no query for them
        messaging_services.message_set_status(
            message=run.message, status=Message.Status.STREAMING, text=""
        )
        live_text_set(message_id=run.message_id, text="")
    return run


def run_execute(*, run_id: str) -> None:
    """Produce one reply. Safe to call again for the same run (redelivery, retries).

    The task is queued when the post commits, so the run is there to claim; the model is
    asked only once the claim has committed, so a stop or a second delivery never reaches it."""
    run = _claim(run_id)
    if run is None or isinstance(run, _Wait):
        if isinstance(run, _Wait):
            _enqueue(run_id, crew=True, countdown=CREW_WAIT_SECONDS)
        return
    stream = _Stream(run=run, seq=run.thread.last_event_seq)
    completion = Completion()
    stream.completion = completion
    status, error = AgentRun.Status.COMPLETE, ""
    started = time.monotonic()
    provider = get_provider(run.model)
    if run.mode == AgentMode.CREW:
        outcome = _crew_execute(run=run, stream=stream, provider=provider, started=started)
        _flush(stream)
        _run_close(
            run=run,
            stream=stream,
            status=outcome.status,
            error=outcome.error,
            usage=outcome.usage,
            meta=outcome.meta,
            provider=provider,
        )
        return
    try:
        for attempt in range(2):
            try:
                messages = context.build(run=run, count_tokens=provider.count_tokens)
                pieces = open_stream(
                    provider,
                    messages=messages,
                    max_tokens=run.model.max_output_tokens,
                    completion=completion,
                    turn=functools.partial(context.turn, run=run, messages=messages),
                )
                cancelled = _pump(stream, pieces, started)
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
    _run_close(
        run=run,
        stream=stream,
        status=status,
        error=error,
        usage=completion.usage,
        meta={},
        provider=provider,
        reported_cost=completion.cost,
    )


def _run_close(
    *,
    run: AgentRun,
    stream: _Stream,
    status: str,
    error: str,
    usage: Usage,
    meta: dict[str, Any],
    provider: Any,
    reported_cost: Decimal | None = None,
) -> None:
    with transaction.atomic():
        locked = (
            AgentRun.objects.select_for_update(of=("self",))
            .select_related("model", "message", "requested_by", "thread")
            .get(pk=run.pk)
        )
        if locked.status in TERMINAL:
            return  # the reaper or a stop already ended it
        locked.message._file_ids = []  # an AI reply has no attachments: no query for them
        locked.prompt_tokens = usage.prompt_tokens
        locked.completion_tokens = usage.completion_tokens
        _finish(
            run=locked,
            text=stream.text,
            status=status,
            error=error,
            meta=meta,
            reported_cost=reported_cost,
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
        try:
            for piece in pieces:
                _append(stream, pacer, window, piece)
                if pacer.cancelled.is_set():
                    return True
                if time.monotonic() - started > settings.RUN_TIME_LIMIT_SECONDS:
                    raise LLMError("The reply took too long and was stopped.")
        except Exception:
            if pacer.cancelled.is_set():
                return True  # the pacer cut the stream because stop was pressed
            raise
        return pacer.cancelled.is_set()
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()  # stops the model generating
        pacer.stop()


def _append(stream: _Stream, pacer: _Pacer, window: float, piece: str) -> None:
    """Add text to the reply; send it now or leave it to the pacer's next batch."""
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

    def _abort_model(self) -> None:
        """Cut the model's stream if it is stalled: the reading thread then sees stop at once
        instead of when the provider times out."""
        with self.stream.lock:
            calls = [self.stream.completion, *self.stream.crew_calls.values()]
        for completion in calls:
            if completion is not None and completion.abort is not None:
                try:
                    completion.abort()
                except Exception:
                    logger.exception("run %s: could not cut a model stream", self.stream.run.pk)

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
                        if _save_progress(self.stream) and not self.cancelled.is_set():
                            self.cancelled.set()
                            self._abort_model()
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
        stream.parts = [text]  # one piece again: the next join copies less
        # Readable before it is announced: a client that fetches the message after
        # subscribing then holds every character of the deltas it did not receive.
        # The store holds text[:sent] from the last flush: only the rest is written.
        live_text_set(message_id=stream.run.message_id, text=text, kept=stream.sent)
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
    """Save the partial text and the heartbeat; return whether stop was asked for.

    Every STREAM_SAVE_MS beside a streaming reply, so it is kept small: one transaction (one
    commit to wait for), and the heartbeat, the stop flag and the thread's seq in one statement.
    The Python it runs holds the interpreter lock that the thread reading the model needs, and
    its rounds were where a delta's worst delays came from."""
    text = stream.text
    now = timezone.now()
    with transaction.atomic():
        if len(text) != stream.saved:
            Message.objects.filter(pk=stream.run.message_id).update(text=text, updated_at=now)
        cancel_requested, seq = _run_pulse(
            run_id=stream.run.pk, thread_id=stream.run.thread_id, now=now
        )
    stream.saved = len(text)
    stream.seq = seq or stream.seq
    return cancel_requested


def _run_pulse(*, run_id: str, thread_id: str, now: datetime) -> tuple[bool, int]:
    """Beat the run's heartbeat; return (stop asked for, the thread's last event seq).
    (UPDATE ... RETURNING, which the ORM cannot say.)"""
    run_table = connection.ops.quote_name(AgentRun._meta.db_table)
    thread_table = connection.ops.quote_name(Thread._meta.db_table)
    sql = (
        f"UPDATE {run_table} SET heartbeat_at = %s WHERE id = %s"  # noqa: S608 - model names
        f" RETURNING cancel_requested, (SELECT last_event_seq FROM {thread_table} WHERE id = %s)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [connection.ops.adapt_datetimefield_value(now), run_id, thread_id])
        row = cursor.fetchone()
    if row is None:
        raise AgentRun.DoesNotExist(run_id)
    return bool(row[0]), int(row[1] or 0)


def _finish(
    *,
    run: AgentRun,
    text: str,
    status: str,
    error: str = "",
    meta: dict[str, Any] | None = None,
    reported_cost: Decimal | None = None,
) -> None:
    """End a run in the caller's transaction: message, usage, money, event; a crew's slot is
    given back. `meta` adds to the message's meta (a crew's usage per agent, artifacts...).

    `reported_cost` is what a provider that prices its own work (an external agent) said the
    reply cost; it replaces the token price. Either way the charge goes through `_settle`, so
    the reservation caps it: an agent that reports more than was held is charged what was held,
    and the message's usage shows both (`cost` charged, `reportedCost` claimed)."""
    extra = dict(meta or {})
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
    breakdown = extra.pop("usage", None)
    if breakdown:
        run.usage = breakdown
    run.save(
        update_fields=[
            "status",
            "error",
            "finished_at",
            "cost",
            "prompt_tokens",
            "completion_tokens",
            "usage",
        ]
    )
    if run.mode == AgentMode.CREW:
        CrewSlot.objects.filter(run=run).update(run=None, taken_at=None)
    usage: dict[str, Any] = {
        "promptTokens": run.prompt_tokens,
        "completionTokens": run.completion_tokens,
        "cost": str(run.cost),
    }
    if breakdown:
        usage.update(breakdown)
    if cost > run.cost:
        usage["reportedCost"] = str(cost)
    message_meta: dict[str, Any] = {"usage": usage, "waiting": None, **extra}
    if error:
        message_meta["error"] = error
    messaging_services.message_complete(
        message=run.message,
        text=text,
        status=_MESSAGE_STATUS[status],
        meta=message_meta,
        usage=usage,
    )
    transaction.on_commit(functools.partial(live_text_drop, message_id=run.message_id))


# --- the crew ----------------------------------------------------------------------------------

CREW_WAIT_SECONDS = 1.0


def _crew_slot_take(run: AgentRun) -> bool:
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


def _crew_wait_note(run: AgentRun) -> None:
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


def artifact_save(
    *,
    run: AgentRun,
    agent: str,
    kind: str,
    title: str,
    content_type: str,
    content: bytes,
    data: dict[str, Any],
) -> Artifact:
    """Store an artifact's bytes in the default storage and its row, with a chatArtifactAdded
    event. The bytes go first: a failed row leaves no row without bytes, and its blob is
    removed."""
    from agents.wire import artifact_json

    artifact = Artifact(
        thread_id=run.thread_id,
        message_id=run.message_id,
        run=run,
        kind=kind,
        title=title,
        content_type=content_type,
        size=len(content),
        data={**data, "agent": agent},
        created_at=timezone.now(),
    )
    artifact.content.save(artifact.pk, ContentFile(content), save=False)
    try:
        with transaction.atomic():
            artifact.save(force_insert=True)
            events.record(
                thread_id=run.thread_id,
                type=EventType.ARTIFACT_ADDED,
                data=artifact_json(artifact),
            )
    except Exception:
        artifact.content.storage.delete(artifact.content.name)
        raise
    return artifact


def thread_delete(*, thread: Thread) -> None:
    """Delete a thread with everything in it, the artifacts' stored bytes included (after
    commit, like attachments)."""
    with transaction.atomic():
        blobs = [
            (artifact.content.storage, artifact.content.name)
            for artifact in Artifact.objects.filter(thread=thread).only("id", "content")
        ]
        messaging_services.thread_delete(thread=thread)
        objects_delete_on_commit(blobs)


@dataclass
class _CrewOutcome:
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


def _crew_execute(*, run: AgentRun, stream: _Stream, provider: Any, started: float) -> _CrewOutcome:
    """Run the crew for one reply: its steps and artifacts become events as they happen, the
    writer's answer streams like a single model's, usage is counted per agent and per tool."""
    from agents import crew
    from agents.tools import CrewStopped, ToolContext

    owner = threading.get_ident()
    ledger = _CrewLedger(model=run.model)
    window = settings.STREAM_FLUSH_MS / 1000
    pacer = _Pacer(stream, window=window)
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
        _append(stream, pacer, window, piece)

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
    gateway_token = cache.get(_gateway_token_key(run.pk)) if settings.GATEWAY_URL else None
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
        _append(stream, pacer, 0, footer)
    breakdown = {"agents": ledger.breakdown(), "tools": tool_context.usage}
    meta: dict[str, Any] = {
        "usage": breakdown,
        "artifacts": [{"id": a["id"], "kind": a["kind"], "title": a["title"]} for a in artifacts],
        "sources": sources,
    }
    if result is not None:
        meta["plan"] = result.plan
    return _CrewOutcome(status=status, error=error, usage=ledger.total(), meta=meta)


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


def _answer_settle(stream: _Stream, answer: str) -> None:
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
                transaction.on_commit(
                    functools.partial(_enqueue, run.pk, crew=run.mode == AgentMode.CREW)
                )
            else:
                _finish(
                    run=run,
                    text=run.message.text,
                    status=AgentRun.Status.FAILED,
                    error="The worker writing this reply stopped; please try again.",
                )
    return handled
