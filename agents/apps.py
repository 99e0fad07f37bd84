from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AgentsConfig(AppConfig):
    name = "agents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from agents.env_model import env_model_sync

        # After the agents tables exist: LLM_PROVIDER=openai + LLM_MODEL make the default model.
        post_migrate.connect(env_model_sync, sender=self, dispatch_uid="agents.env_model_sync")
