"""LLM_PROVIDER=openai with LLM_MODEL makes that model the catalog's default on migrate
(agents.env_model); tests/integration/test_env_default_model.py asks it through a real server."""

from __future__ import annotations

import pytest
from django.test import override_settings

from agents.env_model import ENV_MODEL_ID, env_model_sync
from agents.models import AIModel
from agents.selectors import model_for_request
from tests.conftest import Cast

pytestmark = pytest.mark.django_db


def test_without_openai_in_the_environment_the_catalog_is_left_alone(cast: Cast) -> None:
    assert env_model_sync() is None
    assert model_for_request(user=cast.alice, model_ref=None).pk == "mdl_smollm2"


@override_settings(LLM_PROVIDER="openai", LLM_MODEL="qwen2.5-7b", LLM_CONTEXT_WINDOW=32768)
def test_the_environments_model_becomes_the_default_once(cast: Cast) -> None:
    model = env_model_sync()
    assert model is not None and model.pk == ENV_MODEL_ID
    assert (model.provider, model.provider_model, model.context_window) == (
        "openai",
        "qwen2.5-7b",
        32768,
    )
    assert model_for_request(user=cast.alice, model_ref=None).pk == ENV_MODEL_ID
    assert list(AIModel.objects.filter(is_default=True).values_list("pk", flat=True)) == [
        ENV_MODEL_ID
    ]
    # The operator picks another default in the admin: a later migrate keeps their choice.
    AIModel.objects.filter(pk=ENV_MODEL_ID).update(is_default=False)
    AIModel.objects.filter(pk="mdl_smollm2").update(is_default=True)
    env_model_sync()
    assert model_for_request(user=cast.alice, model_ref=None).pk == "mdl_smollm2"


def test_a_changed_llm_model_moves_the_entry_to_the_new_name(cast: Cast) -> None:
    with override_settings(LLM_PROVIDER="openai", LLM_MODEL="first"):
        env_model_sync()
    with override_settings(LLM_PROVIDER="openai", LLM_MODEL="second"):
        model = env_model_sync()
    assert model is not None and (model.name, model.provider_model) == ("second", "second")
    assert AIModel.objects.filter(pk=ENV_MODEL_ID).count() == 1
