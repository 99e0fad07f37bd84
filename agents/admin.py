from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse

from agents import services
from agents.models import (
    Account,
    AgentRun,
    AIModel,
    Artifact,
    Budget,
    CrewSlot,
    LedgerEntry,
    LegacyModelNumber,
    ModelGrant,
)
from agents.selectors import budget_row_state
from agents.services.budgets import budgets_changed, money_text


class GrantInline(admin.TabularInline):
    model = ModelGrant
    extra = 0
    autocomplete_fields = ("user",)


@admin.register(AIModel)
class AIModelAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "provider",
        "provider_model",
        "price_input_per_1k",
        "price_output_per_1k",
        "reserve_per_reply",
        "supports_tools",
        "agent_mode",
        "is_active",
        "is_default",
        "available_to_all",
    )
    list_filter = ("provider", "is_active", "available_to_all")
    search_fields = ("name", "provider_model", "id")
    inlines = (GrantInline,)


@admin.register(LegacyModelNumber)
class LegacyModelNumberAdmin(admin.ModelAdmin):
    """AI-at-Work clients send an integer model_id; this table says which model answers."""

    list_display = ("number", "legacy_name", "model")
    list_editable = ("model",)
    list_select_related = ("model",)
    search_fields = ("legacy_name", "model__name")
    autocomplete_fields = ("model",)


class LedgerInline(admin.TabularInline):
    model = LedgerEntry
    extra = 0
    can_delete = False
    readonly_fields = ("created_at", "kind", "amount", "run", "note")
    fields = readonly_fields
    ordering = ("-created_at",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # money moves only through the credit action, which keeps the balance true


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ("user", "balance", "updated_at")
    search_fields = ("user__username",)
    readonly_fields = ("user", "balance", "updated_at")
    inlines = (LedgerInline,)
    actions = ("credit_ten",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # accounts are made on a user's first reply, with the starting balance

    @admin.action(description="Credit 10.00 to the selected accounts")
    def credit_ten(self, request: HttpRequest, queryset: Any) -> None:
        for account in queryset:
            services.credit_add(user=account.user, amount=Decimal("10.00"), note="admin credit")
        self.message_user(request, f"Credited {queryset.count()} accounts.", messages.SUCCESS)


class ArtifactInline(admin.TabularInline):
    model = Artifact
    extra = 0
    can_delete = False
    fields = ("id", "kind", "title", "content_type", "size", "created_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AgentRun)
class AgentRunAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "thread",
        "model",
        "status",
        "mode",
        "requested_by",
        "prompt_tokens",
        "completion_tokens",
        "cost",
        "attempts",
        "created_at",
    )
    list_filter = ("status", "mode", "model")
    search_fields = ("id", "thread__id", "message__id", "requested_by__username")
    readonly_fields = [f.name for f in AgentRun._meta.fields]
    list_select_related = ("thread", "model", "requested_by")
    show_full_result_count = False
    inlines = (ArtifactInline,)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Artifact)
class ArtifactAdmin(admin.ModelAdmin):
    """What crews made. Usage per agent and tool is on the run (`usage`)."""

    list_display = ("id", "kind", "title", "thread", "run", "size", "created_at")
    list_filter = ("kind",)
    search_fields = ("id", "title", "thread__id", "run__id")
    readonly_fields = [f.name for f in Artifact._meta.fields]
    list_select_related = ("thread", "run")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(CrewSlot)
class CrewSlotAdmin(admin.ModelAdmin):
    """The deployment's crew places (CREW_MAX_CONCURRENCY) and which run holds each."""

    list_display = ("number", "run", "taken_at")
    readonly_fields = ("number", "run", "taken_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    """Daily and monthly limits for a user or a group (shared by its members). A user's own
    budget for a period replaces the deployment's default (BUDGET_DAILY...) for it."""

    list_display = ("__str__", "user", "group", "period", "amount", "tokens", "this_period")
    list_filter = ("period",)
    list_select_related = ("user", "group")
    search_fields = ("user__username", "group__name")
    autocomplete_fields = ("user", "group")
    fields = ("user", "group", "period", "amount", "tokens", "this_period", "updated_at")
    readonly_fields = ("this_period", "updated_at")

    @admin.display(description="Spent this period")
    def this_period(self, budget: Budget) -> str:
        if budget.pk is None:
            return "-"
        state = budget_row_state(budget=budget)
        parts = []
        if budget.amount is not None:
            parts.append(f"{money_text(state.spent)} of {money_text(budget.amount)}")
        if budget.tokens is not None:
            parts.append(f"{state.tokens_spent} of {budget.tokens} tokens")
        resets = state.resets_at.strftime("%Y-%m-%d %H:%M")
        return f"{', '.join(parts)}; resets {resets} {settings.TIME_ZONE}"

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        defaults = [
            f"{name}={value}"
            for name in (
                "BUDGET_DAILY",
                "BUDGET_MONTHLY",
                "BUDGET_DAILY_TOKENS",
                "BUDGET_MONTHLY_TOKENS",
            )
            if (value := getattr(settings, name)) is not None
        ]
        if defaults and request.method == "GET":
            self.message_user(
                request,
                "Every user without a budget of their own for a period has the default: "
                + ", ".join(defaults),
                messages.INFO,
            )
        return super().changelist_view(request, extra_context)

    # Replies skip budgets while none exist (a cached flag): every change here clears it.
    def save_model(self, request: HttpRequest, obj: Budget, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        budgets_changed()

    def delete_model(self, request: HttpRequest, obj: Budget) -> None:
        super().delete_model(request, obj)
        budgets_changed()

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        super().delete_queryset(request, queryset)
        budgets_changed()
