"""Celery tasks: thin interfaces that take ids and call a service."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings


@shared_task(
    name="agents.run_agent",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    soft_time_limit=settings.RUN_TIME_LIMIT_SECONDS + 30,
    time_limit=settings.RUN_TIME_LIMIT_SECONDS + 60,
)
def run_agent(run_id: str) -> None:
    from agents.services import run_execute

    run_execute(run_id=run_id)


@shared_task(name="agents.reap_stale_runs", ignore_result=True)
def reap_stale_runs() -> int:
    from agents.services import runs_reap_stale

    return runs_reap_stale()
