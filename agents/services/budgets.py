"""Budgets: a reply that could spend past a daily or monthly limit is refused when it is asked
for, before any model is called.

The check runs in `reply_request`, in the asker's transaction, right after the reservation
took the money (so a refusal rolls the question, the reservation and everything else back).

Lock order, the same in every transaction that takes more than one of these rows:

    run row  →  thread row  →  the asker's account  →  Budget rows (ids ascending)

- `message_send` locks the thread (message_post's seq), then the account (`balance_take`), then
  here the Budget rows that apply to the asker: their own and their groups'. `reply_regenerate`
  locks the thread before it reserves, as a post does. A group's row is what serializes its
  members' reservations: each member holds their own account and then waits on the group's
  row, and no one holding a Budget row waits for an account, a thread or a run.
- `run_finish` (worker, reaper, stop) holds the run, locks the thread (`message_complete`) and
  then the account (`settle`), last. It never locks a Budget row: a settlement only gives
  money back (the charge is at most the reservation), so it cannot push anyone over a budget.
- A user budget (a row or the deployment's default) needs no lock of its own: the account
  lock already serializes that user's reservations.

Under PostgreSQL's READ COMMITTED each statement reads what committed before it began, so the
sums taken after the locks see every reservation that held them before.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from agents.selectors import (
    BUDGETS_CONFIGURED_KEY,
    BudgetState,
    budget_limits_for,
    budget_states,
)
from threads.errors import BudgetExceeded
from threads.models import User

_PERIOD_WORDS = {"day": ("daily", "today"), "month": ("monthly", "this month")}


def budgets_changed() -> None:
    """Forget whether budgets exist; the admin calls it on every Budget change. On commit: a
    reply reading the flag before then would cache the old answer again."""
    transaction.on_commit(lambda: cache.delete(BUDGETS_CONFIGURED_KEY))


def budget_reserve(
    *, user: User, amount: Decimal, tokens: int, now: datetime | None = None
) -> None:
    """Refuse (BudgetExceeded) a reply holding `amount` and `tokens` that does not fit every
    budget of `user`: spent in the period plus what unfinished replies hold plus this one.

    Call inside the reservation's transaction with the user's account locked; the Budget rows
    are locked here (see the lock order above). Without budgets it costs one cache read."""
    limits = budget_limits_for(user=user, lock=True)
    if not limits:
        return
    now = now or timezone.now()
    for state in budget_states(user=user, limits=limits, now=now):
        limit = state.limit
        if limit.amount is not None and state.spent + amount > limit.amount:
            raise _refusal(state, now=now, asked=amount, money=True)
        if limit.tokens is not None and state.tokens_spent + tokens > limit.tokens:
            raise _refusal(state, now=now, asked=Decimal(tokens), money=False)


def money_text(value: Decimal) -> str:
    """An amount for people: at least two decimals, at most six, no trailing zeros past two."""
    text = f"{value.quantize(Decimal('0.000001')):f}"
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


def _refusal(state: BudgetState, *, now: datetime, asked: Decimal, money: bool) -> BudgetExceeded:
    limit = state.limit
    adjective, this_period = _PERIOD_WORDS[limit.period]
    kind = f"{adjective} budget" if money else f"{adjective} token budget"
    what = f"your {kind}" if limit.scope == "user" else f"the {kind} of group {limit.group_name!r}"
    if money and limit.amount is not None:
        what += f" ({money_text(limit.amount)})"
        figures = (
            f"{money_text(state.spent)} is spent or held {this_period}, and this reply may "
            f"cost up to {money_text(asked)}"
        )
        whole = asked > limit.amount
    else:
        tokens = limit.tokens or 0
        what += f" ({tokens} tokens)"
        figures = (
            f"{state.tokens_spent} tokens are used or held {this_period}, and this reply may "
            f"use up to {int(asked)}"
        )
        whole = asked > tokens
    resets = state.resets_at.strftime("%Y-%m-%d %H:%M")
    message = (
        f"This reply could exceed {what}: {figures}. It resets at {resets} ({settings.TIME_ZONE})."
    )
    if whole:
        message += " One reply with this model needs more than the whole budget."
    return BudgetExceeded(message, retry_after=(state.resets_at - now).total_seconds())
