"""The end of a run: message, usage, money and event in the caller's transaction.

Its own module because asking (`run_stop` cancels a queued run), the worker (`run_close`) and the
reaper all end runs, and none of them should import the others.
"""

from __future__ import annotations

import functools
import logging
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.utils import timezone

from agents.models import AgentMode, AgentRun, CrewSlot
from agents.services.ledger import reply_cost, settle
from agents.services.lines import line_fill
from messaging import services as messaging_services
from messaging.livetext import live_text_drop
from messaging.models import Message
from threads.models import Thread

logger = logging.getLogger(__name__)

TERMINAL = {AgentRun.Status.COMPLETE, AgentRun.Status.FAILED, AgentRun.Status.CANCELLED}
_MESSAGE_STATUS: dict[str, str] = {
    AgentRun.Status.COMPLETE: Message.Status.COMPLETE,
    AgentRun.Status.FAILED: Message.Status.FAILED,
    AgentRun.Status.CANCELLED: Message.Status.CANCELLED,
}


def run_finish(
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
    reply cost; it replaces the token price. Either way the charge goes through `settle`, so
    the reservation caps it: an agent that reports more than was held is charged what was held,
    and the message's usage shows both (`cost` charged, `reportedCost` claimed).

    Call with the run's row locked. Locks, in the one order every run transaction keeps (see
    agents.services.lines): the thread, the asker's account, the asker's line; the asker's
    oldest held reply, if any, takes the place this run gives back."""
    # The thread first: a post locks its thread before the account, so taking the account
    # first here (settle) could deadlock against the asker's next post in the same thread.
    list(Thread.objects.select_for_update().filter(pk=run.thread_id).values_list("pk"))
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
    # What settle will charge; it runs last (below) so that the locks come in the order every
    # transaction takes them: thread (message_complete), then account (settle). message_send
    # locks the thread and then the asker's account; the reverse here could deadlock the two.
    run.cost = min(cost, run.reserved)
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
    settle(run=run, cost=cost)
    transaction.on_commit(functools.partial(live_text_drop, message_id=run.message_id))
    if run.requested_by_id is not None:
        line_fill(user_id=run.requested_by_id)
