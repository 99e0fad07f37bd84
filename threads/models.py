from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import models

from threads.ids import (
    ID_MAX_LENGTH,
    new_thread_id,
    new_token_id,
    new_topic_id,
    new_user_id,
)
from threads.ratespec import parse_rate

# The ten permissions of 1Backend's Chat Svc, kept under their own names so operators and
# migrated clients recognise them. They are real Django permissions on the Thread model.
CHAT_PERMISSIONS: tuple[tuple[str, str], ...] = (
    ("chat-svc:thread:create", "Can create threads"),
    ("chat-svc:thread:view", "Can view threads"),
    ("chat-svc:thread:edit", "Can edit threads"),
    ("chat-svc:thread:delete", "Can delete threads"),
    ("chat-svc:thread:stream", "Can stream thread events"),
    ("chat-svc:message:create", "Can create messages"),
    ("chat-svc:message:view", "Can view messages"),
    ("chat-svc:message:edit", "Can edit messages"),
    ("chat-svc:message:delete", "Can delete messages"),
    ("chat-svc:message:stream", "Can stream message events"),
)
DEFAULT_GROUP_NAME = "Chat users"


class User(AbstractUser):
    id = models.CharField(primary_key=True, max_length=ID_MAX_LENGTH, default=new_user_id)
    # The organization whose data the AI's gateway tool may fetch for this user (GATEWAY_URL).
    organization_id = models.CharField(max_length=100, blank=True, default="")

    class Meta(AbstractUser.Meta):  # type: ignore[name-defined]
        swappable = "AUTH_USER_MODEL"

    @property
    def is_admin(self) -> bool:
        return self.is_active and self.is_superuser


class ApiToken(models.Model):
    """A bearer token. Only its SHA-256 is stored: a database leak does not leak credentials."""

    id = models.CharField(primary_key=True, max_length=ID_MAX_LENGTH, default=new_token_id)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, blank=True)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(
        max_length=12, editable=False, help_text="First characters, to tell tokens apart."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user_id})"


class Topic(models.Model):
    id = models.CharField(primary_key=True, max_length=ID_MAX_LENGTH, default=new_topic_id)
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=100, unique=True)
    # A tag made by naming it on a thread (Chat Svc's topicIds), not created as a topic: its
    # name is listed only to those who can see a thread that carries it.
    is_tag = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Thread(models.Model):
    id = models.CharField(primary_key=True, max_length=ID_MAX_LENGTH, default=new_thread_id)
    title = models.CharField(max_length=200, default="New chat")
    creator = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="created_threads",
    )
    members = models.ManyToManyField(  # type: ignore[var-annotated]
        settings.AUTH_USER_MODEL, through="ThreadMembership", related_name="threads"
    )
    topics = models.ManyToManyField(Topic, blank=True, related_name="threads")
    session_prompt = models.TextField(blank=True, default="")
    ai_reply = models.BooleanField(
        default=False, help_text="The AI answers every message posted here unless told not to."
    )
    agent_mode = models.CharField(
        max_length=10,
        blank=True,
        default="",
        choices=[("crew", "Crew"), ("core", "Single model"), ("auto", "Auto")],
        help_text="How the AI answers here; empty: the model's or the deployment's setting.",
    )
    # The last message sequence number handed out; message_post increments it under a row lock,
    # which makes Message.seq gap-free at write time and monotonic forever.
    last_message_seq = models.BigIntegerField(default=0)
    # The last event sequence number handed out (messaging.events): every change to the thread
    # takes the next one in the same transaction, so clients resume from a number.
    last_event_seq = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_activity_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-last_activity_at", "-id"]
        permissions = CHAT_PERMISSIONS
        indexes = [models.Index(fields=["-last_activity_at", "-id"], name="thread_activity_idx")]

    def __str__(self) -> str:
        return f"{self.title} ({self.id})"


class ThreadMembership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        MEMBER = "member", "Member"

    thread = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="thread_memberships"
    )
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    joined_at = models.DateTimeField(auto_now_add=True)
    # The newest message seq this member has seen: the thread is unread while
    # thread.last_message_seq is above it.
    last_read_seq = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["thread", "user"], name="membership_unique"),
        ]
        indexes = [models.Index(fields=["user", "thread"], name="membership_user_idx")]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.thread_id} ({self.role})"


def _validate_rate(value: str) -> None:
    try:
        parse_rate(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from exc


class GroupLimits(models.Model):
    """Rate limits for a group's members that differ from the RATE_LIMIT_* defaults. A blank
    field (blank rather than NULL: Django's convention for text) keeps the default; a member
    of several groups gets the most generous rate any of them sets (threads.rates.user_rates).
    """

    RATE_HELP = "COUNT/PERIOD (60/m, 10/5m, 1000/d) or off; blank: the default."

    group = models.OneToOneField(
        "auth.Group", on_delete=models.CASCADE, primary_key=True, related_name="limits"
    )
    posts = models.CharField(
        max_length=20, blank=True, default="", validators=[_validate_rate], help_text=RATE_HELP
    )
    replies = models.CharField(
        max_length=20, blank=True, default="", validators=[_validate_rate], help_text=RATE_HELP
    )
    uploads = models.CharField(
        max_length=20, blank=True, default="", validators=[_validate_rate], help_text=RATE_HELP
    )
    ws_connects = models.CharField(
        "socket connects",
        max_length=20,
        blank=True,
        default="",
        validators=[_validate_rate],
        help_text=RATE_HELP,
    )
    ws_subscribes = models.CharField(
        "socket subscribes",
        max_length=20,
        blank=True,
        default="",
        validators=[_validate_rate],
        help_text=RATE_HELP,
    )

    class Meta:
        verbose_name = "group limits"
        verbose_name_plural = "group limits"

    def __str__(self) -> str:
        return f"Limits of {self.group}"
