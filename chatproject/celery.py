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
def _start_reaper(**kwargs: object) -> None:
    # Every worker also watches for replies whose worker died (no beat process needed).
    from chatproject.embedded import start_reaper

    start_reaper()


@worker_ready.connect
def _warm_up_providers(**kwargs: object) -> None:
    # The first reply must not wait for the model SDK's imports.
    from agents.llm import providers_warm_up_in_background

    providers_warm_up_in_background()
