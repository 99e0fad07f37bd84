"""The Celery app. Tasks live in each app's tasks.py and are found by autodiscovery."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")

app = Celery("chatproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def _on_worker_ready(**kwargs: object) -> None:
    from agents.llm import providers_warm_up_in_background
    from chatproject.embedded import start_reaper

    # Every worker also watches for replies whose worker died (no beat process needed).
    start_reaper()
    # The first reply must not wait for the model SDK's imports.
    providers_warm_up_in_background()
