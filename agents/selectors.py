"""Reads for models, balances and runs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.cache import cache
from django.db.models import Case, Count, DecimalField, F, Q, QuerySet, Sum, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from agents.models import Account, AgentRun, AIModel, Artifact, Budget, LegacyModelNumber
from threads.errors import Forbidden, NotFound
from threads.models import User
from threads.permissions import Perm
from threads.selectors import access_thread


def models_for_user(*, user: User) -> QuerySet[AIModel]:
    """The active models this user may use: open to all, granted to them, or to a group of
    theirs. Admins may use every active model."""
    queryset = AIModel.objects.filter(is_active=True)
    if user.is_admin:
        return queryset.order_by("name")
    return (
        queryset.filter(
            Q(available_to_all=True) | Q(grants__user=user) | Q(grants__group__in=user.groups.all())
        )
        .distinct()
        .order_by("name")
    )


def model_for_request(*, user: User, model_ref: str | None) -> AIModel:
    """The model a reply should use: the one named (id or name) or the default; Forbidden if
    the user may not use it, NotFound if there is no such model."""
    catalog = AIModel.objects.filter(is_active=True)
    if model_ref:
        # One query when the model is there and allowed (every reply asks); the refusals
        # below tell "no such model" from "not yours".
        usable = models_for_user(user=user).filter(Q(pk=model_ref) | Q(name=model_ref)).first()
        if usable is not None:
            return usable
        model = catalog.filter(Q(pk=model_ref) | Q(name=model_ref)).first()
    else:
        model = catalog.filter(is_default=True).order_by("name").first()
        if model is None:
            model = models_for_user(user=user).first()
    if model is None:
        raise NotFound("No such AI model." if model_ref else "No AI model is configured.")
    if not models_for_user(user=user).filter(pk=model.pk).exists():
        raise Forbidden(f"You may not use the model {model.name!r}.")
    return model


def model_for_legacy_request(
    *, user: User, model_number: int | None = None, model_name: str | None = None
) -> AIModel:
    """The model an AI-at-Work client asks for: by its integer model_id through the admin's
    LegacyModelNumber table, or by name (a catalog model's name or id, else an AI-at-Work name
    from the same table), or the default. Access is checked as for any request."""
    if model_number is not None:
        row = LegacyModelNumber.objects.filter(number=model_number).first()
        if row is None or row.model_id is None:
            raise NotFound(f"model_id {model_number} is not mapped to a model.")
        return model_for_request(user=user, model_ref=row.model_id)
    if model_name and not AIModel.objects.filter(Q(pk=model_name) | Q(name=model_name)).exists():
        row = LegacyModelNumber.objects.filter(legacy_name=model_name).first()
        if row is not None and row.model_id is not None:
            return model_for_request(user=user, model_ref=row.model_id)
    return model_for_request(user=user, model_ref=model_name or None)


def balance_of(*, user: User) -> Decimal | None:
    """The user's balance, or None before their account exists (it is made on first use)."""
    return Account.objects.filter(user=user).values_list("balance", flat=True).first()


def usage_of(*, user: User) -> dict[str, Any]:
    totals = AgentRun.objects.filter(requested_by=user).aggregate(
        replies=Count("id"),
        prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"),
        cost=Sum("cost"),
    )
    return {
        "replies": totals["replies"] or 0,
        "promptTokens": totals["prompt_tokens"] or 0,
        "completionTokens": totals["completion_tokens"] or 0,
        "cost": str(totals["cost"] or Decimal(0)),
    }


def run_for_message(*, message_id: str) -> AgentRun:
    run = (
        AgentRun.objects.select_related("model", "thread", "message")
        .filter(message_id=message_id)
        .first()
    )
    if run is None:
        raise NotFound("This message is not an AI reply.")
    return run


ARTIFACT_NOT_FOUND = "Artifact not found."


def artifacts_of_message(*, message_id: str) -> list[dict[str, Any]]:
    """The artifacts an AI reply made, oldest first. The caller has checked access."""
    from agents.wire import artifact_json

    return [artifact_json(a) for a in Artifact.objects.filter(message_id=message_id)]


def artifact_list(*, user: User, thread_id: str) -> QuerySet[Artifact]:
    """A thread's artifacts, for its members (the same check as reading its messages)."""
    thread = access_thread(user=user, thread_id=thread_id, perm=Perm.MESSAGE_VIEW)
    return Artifact.objects.filter(thread=thread).order_by("created_at", "id")


def access_artifact(*, user: User, artifact_id: str) -> Artifact:
    """An artifact whose thread the user may read; one 404 for missing and not yours."""
    artifact = Artifact.objects.filter(pk=artifact_id).first()
    if artifact is None:
        raise NotFound(ARTIFACT_NOT_FOUND)
    try:
        access_thread(user=user, thread_id=artifact.thread_id, perm=Perm.MESSAGE_VIEW)
    except (NotFound, Forbidden):
        raise NotFound(ARTIFACT_NOT_FOUND) from None
    return artifact


# --- Budgets -------------------------------------------------------------------------------

BUDGETS_CONFIGURED_KEY = "threadline:budgets-configured"
# How long "are there Budget rows at all?" is believed. The admin clears it on every change
# (agents.services.budgets.budgets_changed); a row written another way counts within this.
BUDGETS_CONFIGURED_TTL = 60


@dataclass(frozen=True)
class BudgetLimit:
    """One budget that applies to a user: theirs (a Budget row, or the deployment's default
    when they have no row for the period) or one of their groups' (shared by its members)."""

    scope: str  # "user" or "group"
    period: str  # Budget.Period
    amount: Decimal | None
    tokens: int | None
    budget_id: int | None = None  # None: the deployment's default (BUDGET_DAILY...)
    group_id: int | None = None
    group_name: str = ""


@dataclass(frozen=True)
class BudgetState:
    """A budget and what was spent against it this period: settled charges plus what the
    unfinished replies hold (their reservations)."""

    limit: BudgetLimit
    spent: Decimal
    tokens_spent: int
    resets_at: datetime

    @property
    def remaining(self) -> Decimal | None:
        if self.limit.amount is None:
            return None
        return max(self.limit.amount - self.spent, Decimal(0))

    @property
    def tokens_remaining(self) -> int | None:
        if self.limit.tokens is None:
            return None
        return max(self.limit.tokens - self.tokens_spent, 0)


def budget_period_bounds(*, period: str, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The current period's start and its end (the reset), in settings.TIME_ZONE: a day from
    local midnight, a month from the 1st."""
    zone = ZoneInfo(settings.TIME_ZONE)
    local = (now or timezone.now()).astimezone(zone)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == Budget.Period.DAY:
        # Midnight of the next date, not +24 h: a daylight-saving day is 23 or 25 hours.
        following = (day + timedelta(days=1)).date()
        end = datetime(following.year, following.month, following.day, tzinfo=zone)
        return day, end
    start = day.replace(day=1)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start, datetime(year, month, 1, tzinfo=zone)


def budgets_configured() -> bool:
    """Whether any Budget row exists: one cache read on the common path (no budgets), so a
    reply without budgets costs no query for them."""
    known = cache.get(BUDGETS_CONFIGURED_KEY)
    if known is None:
        known = int(Budget.objects.exists())
        cache.set(BUDGETS_CONFIGURED_KEY, known, BUDGETS_CONFIGURED_TTL)
    return bool(known)


def _default_limits() -> dict[str, tuple[Decimal | None, int | None]]:
    defaults = {
        Budget.Period.DAY: (settings.BUDGET_DAILY, settings.BUDGET_DAILY_TOKENS),
        Budget.Period.MONTH: (settings.BUDGET_MONTHLY, settings.BUDGET_MONTHLY_TOKENS),
    }
    return {str(period): limits for period, limits in defaults.items() if limits != (None, None)}


def budget_limits_for(*, user: User, lock: bool = False) -> list[BudgetLimit]:
    """Every budget that applies to `user`, group budgets in the order of their rows' ids.

    `lock` locks the Budget rows read (the group's row is what serializes its members'
    reservations), in id order so that two transactions never wait on each other; call it
    inside a transaction, after the account lock (see agents.services.budgets)."""
    defaults = _default_limits()
    rows: list[Budget] = []
    if budgets_configured():
        user_groups = user.groups.through.objects.filter(user_id=user.pk).values("group_id")
        queryset = Budget.objects.filter(Q(user_id=user.pk) | Q(group_id__in=user_groups))
        if lock:
            queryset = queryset.select_for_update(of=("self",))
        rows = list(queryset.select_related("group").order_by("pk"))
    limits: list[BudgetLimit] = []
    own = {row.period for row in rows if row.user_id is not None}
    for period, (amount, tokens) in defaults.items():
        if period not in own:
            limits.append(BudgetLimit(scope="user", period=period, amount=amount, tokens=tokens))
    for row in rows:
        limits.append(
            BudgetLimit(
                scope="user" if row.user_id is not None else "group",
                period=row.period,
                amount=row.amount,
                tokens=row.tokens,
                budget_id=row.pk,
                group_id=row.group_id,
                group_name=row.group.name if row.group is not None else "",
            )
        )
    return limits


_MONEY: DecimalField[Decimal, Decimal] = DecimalField(max_digits=16, decimal_places=6)
_OUTSTANDING = (AgentRun.Status.QUEUED, AgentRun.Status.RUNNING)
# A finished reply counts what it was charged and the tokens it used; an unfinished one what
# it holds (its reservation), so concurrent replies cannot each spend the same remainder.
_CHARGED = Case(
    When(status__in=_OUTSTANDING, then=F("reserved")), default=F("cost"), output_field=_MONEY
)
_TOKENS = Case(
    When(status__in=_OUTSTANDING, then=F("reserved_tokens")),
    default=F("prompt_tokens") + F("completion_tokens"),
)


def _spending(
    *, runs: Q, periods: set[str], now: datetime
) -> dict[str, tuple[Decimal, int, datetime]]:
    """(spent, tokens, resets_at) per period for the runs `runs` selects: one query for both
    periods (a day lies inside its month)."""
    bounds = {period: budget_period_bounds(period=period, now=now) for period in periods}
    earliest = min(start for start, _ in bounds.values())
    sums: dict[str, Any] = {}
    for period, (start, _) in bounds.items():
        window = Q(created_at__gte=start)
        sums[f"{period}_money"] = Coalesce(
            Sum(_CHARGED, filter=window), Value(Decimal(0)), output_field=_MONEY
        )
        sums[f"{period}_tokens"] = Coalesce(Sum(_TOKENS, filter=window), Value(0))
    totals = AgentRun.objects.filter(runs, created_at__gte=earliest).aggregate(**sums)
    return {
        period: (
            Decimal(totals[f"{period}_money"]),
            int(totals[f"{period}_tokens"]),
            bounds[period][1],
        )
        for period in periods
    }


def budget_states(
    *, user: User, limits: list[BudgetLimit], now: datetime | None = None
) -> list[BudgetState]:
    """What each of `limits` (budget_limits_for the user) has left: one query for the user's
    own budgets and one for each group's."""
    now = now or timezone.now()
    scopes: dict[int | None, set[str]] = {}
    for limit in limits:
        scopes.setdefault(limit.group_id, set()).add(limit.period)
    spending: dict[int | None, dict[str, tuple[Decimal, int, datetime]]] = {}
    for group_id, periods in scopes.items():
        if group_id is None:
            runs = Q(requested_by_id=user.pk)
        else:
            members = user.groups.through.objects.filter(group_id=group_id).values("user_id")
            runs = Q(requested_by_id__in=members)
        spending[group_id] = _spending(runs=runs, periods=periods, now=now)
    states = []
    for limit in limits:
        spent, tokens, resets_at = spending[limit.group_id][limit.period]
        states.append(
            BudgetState(limit=limit, spent=spent, tokens_spent=tokens, resets_at=resets_at)
        )
    return states


def budget_status(*, user: User) -> list[BudgetState]:
    """The user's budgets and what each has left, for /me and the UI."""
    limits = budget_limits_for(user=user)
    return budget_states(user=user, limits=limits) if limits else []


def budget_row_state(*, budget: Budget, now: datetime | None = None) -> BudgetState:
    """One Budget row's spending this period (the admin's list)."""
    now = now or timezone.now()
    if budget.user_id is not None:
        runs = Q(requested_by_id=budget.user_id)
    else:
        members = User.groups.through.objects.filter(group=budget.group).values("user_id")
        runs = Q(requested_by_id__in=members)
    spent, tokens, resets_at = _spending(runs=runs, periods={budget.period}, now=now)[budget.period]
    limit = BudgetLimit(
        scope="user" if budget.user_id is not None else "group",
        period=budget.period,
        amount=budget.amount,
        tokens=budget.tokens,
        budget_id=budget.pk,
        group_id=budget.group_id,
    )
    return BudgetState(limit=limit, spent=spent, tokens_spent=tokens, resets_at=resets_at)
