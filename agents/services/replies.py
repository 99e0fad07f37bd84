"""Asking for a reply, asking again, and stopping one.

`reply_request` makes the queued AI message and its run inside the asker's transaction, reserves
the money, and queues the run's id on commit: nothing is queued or asked before the commit.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from agents.models import AgentMode, AgentRun, AIModel, LedgerEntry
from agents.services.budgets import budget_reserve
from agents.services.finish import TERMINAL, run_finish
from agents.services.ledger import (
    account_lock,
    balance_take,
    most_a_reply_can_cost,
    most_tokens_a_reply_can_use,
)
from agents.services.lines import enqueue, line_join, reply_queue_check
from messaging import services as messaging_services
from messaging.models import Message
from threads.errors import Conflict, Forbidden, NotFound
from threads.ids import new_run_id
from threads.models import Thread, User
from threads.selectors import is_thread_owner


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
    below zero or below what the reply may cost, 429 BudgetExceeded for a budget it could
    exceed, 429 ReplyQueueFull for a full line) rolls the question back with it, and no model
    is called. `gateway_token` is the asker's bearer token, forwarded by the crew's gateway
    tool and kept only in the cache for the run's lifetime (never in the database).

    The run is dispatched on commit if the asker has a free place in their line, else held
    (status `queued`, meta `waiting`) until one of their replies ends (agents.services.lines).
    Locks the thread, the account, the budgets' rows, then the asker's line: the order every
    run transaction keeps.
    """
    # The thread before the account (a question's post has locked it already; a regenerate
    # has not): run_finish takes them in this order too.
    list(Thread.objects.select_for_update().filter(pk=thread.pk).values_list("pk"))
    mode = agent_mode_for(thread=thread, model=model)
    reserve = most_a_reply_can_cost(model)
    reserve_tokens = most_tokens_a_reply_can_use(model)
    if mode == AgentMode.CREW:
        reserve *= CREW_RESERVED_CALLS
        reserve_tokens *= CREW_RESERVED_CALLS
    account_id = balance_take(user=requester, amount=reserve)
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
    # The account is locked now (the UPDATE above, or account_lock): budgets are checked under
    # it, so this user's concurrent reservations are counted one after another.
    budget_reserve(user=requester, amount=reserve, tokens=reserve_tokens)
    place = line_join(user_id=requester.pk)
    run_id = new_run_id()
    meta: dict[str, object] = {
        "modelId": model.pk,
        "platformId": model.provider,
        "model": model.name,
        "mode": mode,
    }
    if not place.dispatch:
        meta["waiting"] = {
            "reason": f"You have {settings.REPLY_CONCURRENCY_PER_USER} replies being written; "
            "this one waits for its turn.",
            "ahead": place.ahead,
        }
    message, _ = messaging_services.message_post(
        thread=thread,
        author=None,
        text="",
        status=Message.Status.QUEUED,
        meta=meta,
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
        reserved_tokens=reserve_tokens,
        dispatched_at=timezone.now() if place.dispatch else None,
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
        token_key = gateway_token_key(run_id)
        timeout = settings.RUN_TIME_LIMIT_SECONDS * 2 + 600
        transaction.on_commit(lambda: cache.set(token_key, gateway_token, timeout=timeout))
    if place.dispatch:
        transaction.on_commit(lambda: enqueue(run_id, crew=mode == AgentMode.CREW))
    return run


def gateway_token_key(run_id: str) -> str:
    """Where the asker's bearer token waits in the cache for the run's crew (crew_runs)."""
    return f"threadline:run-gateway-token:{run_id}"


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
    reply_queue_check(user_id=actor.pk)
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
            run_finish(run=run, text="", status=AgentRun.Status.CANCELLED)
    return run
