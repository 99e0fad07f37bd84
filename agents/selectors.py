"""Reads for models, balances and runs."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum

from agents.models import Account, AgentRun, AIModel, Artifact, LegacyModelNumber
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
