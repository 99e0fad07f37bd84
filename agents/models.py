"""The AI participant: the model catalog and who may use which, money, and runs."""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q
from django.utils import timezone

from messaging.models import Message
from threads.ids import ID_MAX_LENGTH, new_artifact_id, new_model_id, new_run_id
from threads.models import Thread


class AgentMode(models.TextChoices):
    """How a reply is produced: one model call, or a crew of specialists with tools. `auto`
    picks the crew when the model can call tools."""

    AUTO = "auto", "Auto (crew when the model can call tools)"
    CREW = "crew", "Crew"
    CORE = "core", "Single model"


class AIModel(models.Model):
    class Provider(models.TextChoices):
        LOCAL = "local", "Bundled model (llama-cpp-python, in the worker)"
        OPENAI = "openai", "OpenAI-compatible server"
        GRPC_AGENT = "grpc_agent", "External agent over gRPC (AGENT_GRPC_TARGET)"

    id = models.CharField(primary_key=True, max_length=ID_MAX_LENGTH, default=new_model_id)
    name = models.CharField(max_length=100, unique=True, help_text="What users pick.")
    provider = models.CharField(max_length=20, choices=Provider.choices, default=Provider.LOCAL)
    provider_model = models.CharField(
        max_length=200, blank=True, help_text="The model's name at the provider (openai)."
    )
    context_window = models.PositiveIntegerField(default=2048)
    max_output_tokens = models.PositiveIntegerField(default=256)
    price_input_per_1k = models.DecimalField(default=Decimal(0), max_digits=16, decimal_places=6)
    price_output_per_1k = models.DecimalField(default=Decimal(0), max_digits=16, decimal_places=6)
    supports_tools = models.BooleanField(
        default=False,
        help_text="The model follows tool-use instructions well enough to drive the crew.",
    )
    agent_mode = models.CharField(
        max_length=10,
        blank=True,
        default="",
        choices=AgentMode.choices,
        help_text="Empty: the deployment's AGENT_MODE.",
    )
    reserve_per_reply = models.DecimalField(
        null=True,
        blank=True,
        max_digits=16,
        decimal_places=6,
        help_text="The most one reply may cost: held before it starts and never exceeded. "
        "Empty: a full context window and the output limit at the token prices. Set it for "
        "an external agent (grpc_agent), which reports its own cost.",
    )
    is_active = models.BooleanField(default=True)
    is_default = models.BooleanField(default=False, help_text="Used when a request names none.")
    available_to_all = models.BooleanField(
        default=False, help_text="Every user may use it, without a grant."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "AI model"

    def __str__(self) -> str:
        return self.name


class LegacyModelNumber(models.Model):
    """AI-at-Work's integer `model_id` (0 gpt-3.5-turbo-0125 ... 8 llama3.1:8b) and the catalog
    model it means here. Its clients send the number; the operator decides what answers."""

    number = models.PositiveSmallIntegerField(unique=True)
    legacy_name = models.CharField(
        max_length=100,
        help_text="The name AI-at-Work gave the number; also accepted as model_name.",
    )
    model = models.ForeignKey(
        AIModel,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="legacy_numbers",
        help_text="The catalog model that answers for this number; empty: the number is refused.",
    )

    class Meta:
        ordering = ["number"]
        verbose_name = "AI-at-Work model number"

    def __str__(self) -> str:
        return f"{self.number} {self.legacy_name} → {self.model or '(unmapped)'}"


class ModelGrant(models.Model):
    """Lets one user, or every member of one group, use a model."""

    model = models.ForeignKey(AIModel, on_delete=models.CASCADE, related_name="grants")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True
    )
    group = models.ForeignKey(Group, on_delete=models.CASCADE, null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(user__isnull=False, group__isnull=True)
                | Q(user__isnull=True, group__isnull=False),
                name="grant_user_xor_group",
            )
        ]

    def __str__(self) -> str:
        return f"{self.model} → {self.user or self.group}"


class Account(models.Model):
    """A user's balance. `balance` always equals the sum of the user's ledger entries: both are
    written in one transaction with this row locked."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="account"
    )
    balance = models.DecimalField(default=Decimal(0), max_digits=16, decimal_places=6)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.user_id}: {self.balance}"


class Budget(models.Model):
    """A spending limit per day or per month for one user, or shared by every member of one
    group: money (the ledger's currency), tokens, or both. A user's own row for a period
    replaces the deployment's default for it (BUDGET_DAILY...); group rows apply on top.

    Checked when a reply is asked for (agents.services.budgets), against what the user or the
    group spent in the period plus what their unfinished replies hold."""

    class Period(models.TextChoices):
        DAY = "day", "Day"
        MONTH = "month", "Month"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="budgets",
    )
    group = models.ForeignKey(
        Group, on_delete=models.CASCADE, null=True, blank=True, related_name="budgets"
    )
    period = models.CharField(max_length=5, choices=Period.choices)
    amount = models.DecimalField(
        null=True,
        blank=True,
        max_digits=16,
        decimal_places=6,
        help_text="The most that may be spent in the period. Empty: no money limit.",
    )
    tokens = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="The most tokens (prompt and completion) in the period. Empty: no token limit.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["user", "group", "period"]
        constraints = [
            models.CheckConstraint(
                condition=Q(user__isnull=False, group__isnull=True)
                | Q(user__isnull=True, group__isnull=False),
                name="budget_user_xor_group",
                violation_error_message="A budget is for one user or for one group.",
            ),
            models.CheckConstraint(
                condition=Q(amount__isnull=False) | Q(tokens__isnull=False),
                name="budget_has_a_limit",
                violation_error_message="Set an amount, a number of tokens, or both.",
            ),
            models.CheckConstraint(
                condition=Q(amount__isnull=True) | Q(amount__gte=0),
                name="budget_amount_not_negative",
            ),
            models.UniqueConstraint(
                fields=["user", "period"],
                condition=Q(user__isnull=False),
                name="budget_user_once",
                violation_error_message="This user already has a budget for this period.",
            ),
            models.UniqueConstraint(
                fields=["group", "period"],
                condition=Q(group__isnull=False),
                name="budget_group_once",
                violation_error_message="This group already has a budget for this period.",
            ),
        ]

    def __str__(self) -> str:
        owner = f"user {self.user}" if self.user_id else f"group {self.group}"
        return f"{owner}: per {self.period}"


class AgentRun(models.Model):
    """One AI reply being produced: the AI message, the model, the money, the worker's state."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        COMPLETE = "complete", "Complete"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    id = models.CharField(primary_key=True, max_length=ID_MAX_LENGTH, default=new_run_id)
    thread = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="runs")
    message = models.OneToOneField(Message, on_delete=models.CASCADE, related_name="run")
    request_message = models.ForeignKey(
        Message, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="runs"
    )
    model = models.ForeignKey(AIModel, on_delete=models.PROTECT, related_name="runs")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    mode = models.CharField(max_length=10, choices=AgentMode.choices, default=AgentMode.CORE)
    # Tokens and cost per agent, calls and time per tool: {"agents": {...}, "tools": {...}}.
    usage = models.JSONField(default=dict, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # When the run was handed to the broker; empty while it is held back because its asker
    # already has REPLY_CONCURRENCY_PER_USER replies going (agents.services.lines). Only
    # reply_request holds a run back; a run made any other way counts as dispatched.
    dispatched_at = models.DateTimeField(null=True, blank=True, default=timezone.now)
    # When the reaper sent the task again because no worker had claimed it in
    # QUEUED_STALE_SECONDS (the broker lost it, say); a run that goes unclaimed once more fails.
    redispatched_at = models.DateTimeField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    reserved = models.DecimalField(default=Decimal(0), max_digits=16, decimal_places=6)
    # The most tokens the reply may use, held against token budgets until it ends.
    reserved_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(default=Decimal(0), max_digits=16, decimal_places=6)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "heartbeat_at"], name="run_status_heartbeat"),
            # A budget sums the asker's runs of the period.
            models.Index(fields=["requested_by", "created_at"], name="run_asker_created"),
            # A user's unfinished runs, counted and walked oldest first on every dispatch.
            models.Index(fields=["requested_by", "status", "created_at"], name="run_user_status"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"


class UserLine(models.Model):
    """One row per user who has asked for a reply: the lock every decision to dispatch one of
    that user's replies takes (a post, a finish, the reaper), so two of them can never both
    see a free place and together dispatch past REPLY_CONCURRENCY_PER_USER. Nothing else is
    kept here: how many runs are going is counted from the runs themselves."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="reply_line",
    )

    def __str__(self) -> str:
        return f"reply line of {self.user_id}"


class LedgerEntry(models.Model):
    """One movement of a user's money. Credits are positive; reservations, charges negative;
    releases give back what a reservation held beyond the real cost."""

    class Kind(models.TextChoices):
        CREDIT = "credit", "Credit"
        RESERVE = "reserve", "Reservation"
        SETTLE = "settle", "Settlement"

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="entries")
    amount = models.DecimalField(max_digits=16, decimal_places=6)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    run = models.ForeignKey(
        AgentRun, on_delete=models.SET_NULL, null=True, blank=True, related_name="ledger"
    )
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "ledger entries"
        constraints = [
            # A retried task can never reserve or settle the same run twice.
            models.UniqueConstraint(
                fields=["run", "kind"], condition=Q(run__isnull=False), name="ledger_once_per_run"
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} ({self.account_id})"


class ThreadSummary(models.Model):
    """The rolling summary of a thread's older turns, which the model reads instead of them."""

    thread = models.OneToOneField(Thread, on_delete=models.CASCADE, related_name="summary")
    text = models.TextField()
    upto_seq = models.BigIntegerField(help_text="The last message seq the summary covers.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "thread summaries"

    def __str__(self) -> str:
        return f"summary of {self.thread_id} to #{self.upto_seq}"


class CrewSlot(models.Model):
    """One of CREW_MAX_CONCURRENCY places for a running crew, deployment-wide. A run takes a
    free slot (or one whose run has ended or gone silent) under a row lock; the rows are the
    semaphore, so the cap holds across any number of worker processes and machines."""

    number = models.PositiveIntegerField(primary_key=True)
    run = models.OneToOneField(
        AgentRun, on_delete=models.SET_NULL, null=True, blank=True, related_name="crew_slot"
    )
    taken_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"crew slot {self.number}: {self.run_id or 'free'}"


def _artifact_path(instance: Artifact, filename: str) -> str:
    # Named by id alone, like attachments: nothing a model wrote becomes a path or a key.
    return f"artifacts/{instance.created_at:%Y/%m}/{instance.pk}"


class Artifact(models.Model):
    """Something the crew made besides text: a chart, a table, a summary document."""

    class Kind(models.TextChoices):
        CHART = "chart", "Chart"
        TABLE = "table", "Table"
        SUMMARY = "summary", "Summary"
        FILE = "file", "File"

    id = models.CharField(primary_key=True, max_length=ID_MAX_LENGTH, default=new_artifact_id)
    thread = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="artifacts")
    message = models.ForeignKey(
        Message, on_delete=models.SET_NULL, null=True, blank=True, related_name="artifacts"
    )
    run = models.ForeignKey(
        AgentRun, on_delete=models.SET_NULL, null=True, blank=True, related_name="artifacts"
    )
    kind = models.CharField(max_length=10, choices=Kind.choices)
    title = models.CharField(max_length=200)
    content_type = models.CharField(max_length=100)
    size = models.BigIntegerField()
    content = models.FileField(upload_to=_artifact_path, max_length=255)
    # What stands behind it: a chart's data rows, a table's Markdown, the agent that made it.
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["thread", "created_at"], name="artifact_thread_idx")]

    def __str__(self) -> str:
        return f"{self.kind} {self.title!r} ({self.id})"
