"""A first run against an OpenAI-compatible server, with no catalog work: `LLM_PROVIDER=openai`,
`LLM_BASE_URL` (and `LLM_API_KEY` if the server wants one) and `LLM_MODEL` give a catalog
entry for that model, usable by everyone and the default, made when the database is migrated
(`make run` and every deployment migrate first).

Made once: after that it is an ordinary catalog entry the admin may edit (prices, grants,
another default). A changed `LLM_MODEL` moves the entry to the new model name.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction

from agents.models import AIModel

logger = logging.getLogger(__name__)

ENV_MODEL_ID = "mdl_env_default"


def env_model_sync(**kwargs: Any) -> AIModel | None:
    """The environment's model in the catalog (None when the environment names none); a
    post_migrate receiver, so `kwargs` are the signal's."""
    if settings.LLM_PROVIDER != "openai" or not settings.LLM_MODEL:
        return None
    name = settings.LLM_MODEL
    with transaction.atomic():
        model = AIModel.objects.select_for_update().filter(pk=ENV_MODEL_ID).first()
        if model is not None:
            if model.provider_model != name:
                model.provider_model = model.name = name
                model.save(update_fields=["provider_model", "name"])
            return model
        AIModel.objects.filter(is_default=True).update(is_default=False)
        model = AIModel.objects.create(
            id=ENV_MODEL_ID,
            name=name,
            provider="openai",
            provider_model=name,
            context_window=settings.LLM_CONTEXT_WINDOW,
            max_output_tokens=settings.LLM_MAX_OUTPUT_TOKENS,
            price_input_per_1k=Decimal(0),
            price_output_per_1k=Decimal(0),
            is_active=True,
            is_default=True,
            available_to_all=True,
        )
    logger.info("the default model is now %s at %s", name, settings.LLM_BASE_URL or "OpenAI")
    return model
