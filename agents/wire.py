"""JSON shapes of the agents app's objects, as clients read them (camelCase).

Declared once, as ArtifactOutput: the REST views answer with it, the chatArtifactAdded event
and a reply's artifact list carry what `artifact_json` makes with it, and the OpenAPI schema is
generated from the same fields. BudgetOutput likewise for GET /me/'s budgets.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from rest_framework import serializers

from agents.models import Artifact, Budget
from agents.selectors import BudgetState
from agents.services.ledger import MICRO
from threads.wire import WireSerializer


class ArtifactOutput(WireSerializer):
    id = serializers.CharField()
    threadId = serializers.CharField(source="thread_id")
    messageId = serializers.CharField(source="message_id", allow_null=True)
    runId = serializers.CharField(source="run_id", allow_null=True)
    kind = serializers.ChoiceField(choices=Artifact.Kind.choices)
    title = serializers.CharField(allow_blank=True)
    contentType = serializers.CharField(source="content_type")
    size = serializers.IntegerField()
    data = serializers.JSONField(  # type: ignore[assignment]
        help_text="A chart's data rows, a table's Markdown, the agent."
    )
    contentUrl = serializers.SerializerMethodField()
    createdAt = serializers.DateTimeField(source="created_at")

    def get_contentUrl(self, artifact: Artifact) -> str:
        return f"/api/v1/artifacts/{artifact.pk}/content/"


# One bound instance: to_representation keeps no per-call state, and building a serializer
# deep-copies its declared fields.
_ARTIFACT = ArtifactOutput()


def artifact_json(artifact: Artifact) -> dict[str, Any]:
    return _ARTIFACT.to_representation(artifact)


class BudgetOutput(serializers.Serializer):
    """One budget that applies to the caller and what it has left this period (GET /me/)."""

    scope = serializers.ChoiceField(
        choices=["user", "group"], help_text="user: the caller's own; group: shared by a group"
    )
    group = serializers.CharField(
        allow_null=True, help_text="The group's name for a group budget, else null."
    )
    period = serializers.ChoiceField(choices=Budget.Period.choices)
    limit = serializers.CharField(allow_null=True, help_text="Money (Decimal string); null: none.")
    spent = serializers.CharField(help_text="Charged plus held by unfinished replies, this period.")
    remaining = serializers.CharField(allow_null=True, help_text="Decimal string; null: no limit.")
    tokenLimit = serializers.IntegerField(allow_null=True)
    tokensSpent = serializers.IntegerField()
    tokensRemaining = serializers.IntegerField(allow_null=True)
    resetsAt = serializers.DateTimeField(help_text="When the period starts again (TIME_ZONE).")


def budget_fields(state: BudgetState) -> dict[str, Any]:
    """What BudgetOutput writes a budget from (it is nested in the /me/ shape)."""
    limit = state.limit

    def money(value: Decimal | None) -> str | None:
        # Six places, as the ledger keeps them, whether the figure came from a row or a setting.
        return None if value is None else str(value.quantize(MICRO))

    return {
        "scope": limit.scope,
        "group": limit.group_name or None,
        "period": limit.period,
        "limit": money(limit.amount),
        "spent": money(state.spent),
        "remaining": money(state.remaining),
        "tokenLimit": limit.tokens,
        "tokensSpent": state.tokens_spent,
        "tokensRemaining": state.tokens_remaining,
        "resetsAt": state.resets_at,
    }
