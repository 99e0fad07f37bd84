"""Money: the accounts, the ledger, what a reply costs and what it may cost.

A reply reserves the most it can cost before any model is asked (`reply_request`) and settles to
the real token count once, when it ends (`settle`, from `run_finish`).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from agents.models import Account, AgentRun, AIModel, LedgerEntry
from threads.models import User

MICRO = Decimal("0.000001")


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
                ledger_add(
                    account=account,
                    amount=starting,
                    kind=LedgerEntry.Kind.CREDIT,
                    note="starting balance",
                )
    except IntegrityError:
        pass  # made by a concurrent request; lock theirs
    return Account.objects.select_for_update().get(user=user)


def ledger_add(
    *, account: Account, amount: Decimal, kind: str, run: AgentRun | None = None, note: str = ""
) -> LedgerEntry:
    """One ledger entry and the matching balance change, on a locked account."""
    entry = LedgerEntry.objects.create(
        account=account, amount=amount, kind=kind, run=run, note=note
    )
    account.balance += amount
    account.save(update_fields=["balance", "updated_at"])
    return entry


def balance_take(*, user: User, amount: Decimal) -> int | None:
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
        return ledger_add(account=account, amount=amount, kind=LedgerEntry.Kind.CREDIT, note=note)


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


def most_tokens_a_reply_can_use(model: AIModel) -> int:
    """The tokens one model call may take: its prompt is cut to fit the context window with
    room for the output limit, so the whole window bounds it."""
    return int(model.context_window)


def settle(*, run: AgentRun, cost: Decimal) -> Decimal:
    """Give back what the reservation held beyond `cost`; once per run. Returns the charge."""
    charge = min(cost, run.reserved)  # the reservation is the most we ever take
    if run.requested_by is None:
        return charge
    account = account_lock(user=run.requested_by)
    if LedgerEntry.objects.filter(run=run, kind=LedgerEntry.Kind.SETTLE).exists():
        return charge
    ledger_add(
        account=account,
        amount=run.reserved - charge,
        kind=LedgerEntry.Kind.SETTLE,
        run=run,
        note=f"{run.prompt_tokens} + {run.completion_tokens} tokens",
    )
    return charge
