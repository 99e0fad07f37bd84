"""Every accepted run ends: a run handed to the broker that no worker claims (a broker restart
without persistence empties its queue) is sent once more by the reaper, then failed with its
reservation released. With the scripted test LLM; tasks captured by the `queued` fixture."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from agents import services
from agents.models import AgentRun, LedgerEntry
from messaging.models import Message
from tests.conftest import Cast

pytestmark = pytest.mark.django_db(transaction=True)


def _ask(cast: Cast, text: str = "What is 2+2?") -> AgentRun:
    response = cast.client(cast.alice).post(
        f"/api/v1/threads/{cast.thread.pk}/messages/",
        {"text": text, "reply": True},
        format="json",
    )
    assert response.status_code == 201, response.content
    return AgentRun.objects.get(pk=response.json()["reply"]["runId"])


def _age(run: AgentRun, seconds: float) -> None:
    """As if the run's task had been handed to the broker `seconds` ago."""
    AgentRun.objects.filter(pk=run.pk).update(
        dispatched_at=timezone.now() - timedelta(seconds=seconds)
    )


def test_an_unclaimed_run_is_sent_again_once_then_failed_and_released(
    cast: Cast, settings: Any, queued: list[dict[str, Any]]
) -> None:
    settings.QUEUED_STALE_SECONDS = 60
    run = _ask(cast)
    assert [call["args"][0] for call in queued] == [run.pk]
    _age(run, 30)
    assert services.runs_reap_stale() == 0  # not yet stale
    _age(run, 61)
    assert services.runs_reap_stale() == 1
    run.refresh_from_db()
    assert run.status == AgentRun.Status.QUEUED and run.redispatched_at is not None
    assert [call["args"][0] for call in queued] == [run.pk, run.pk]  # sent again
    _age(run, 61)
    assert services.runs_reap_stale() == 1
    run.refresh_from_db()
    assert run.status == AgentRun.Status.FAILED
    assert "No worker picked this reply up" in run.error
    message = Message.objects.get(pk=run.message_id)
    assert message.status == Message.Status.FAILED
    entries = LedgerEntry.objects.filter(run=run)
    # The whole reservation came back: nothing was generated, nothing is charged.
    assert sum((entry.amount for entry in entries), Decimal(0)) == 0
    assert sorted(entries.values_list("kind", flat=True)) == ["reserve", "settle"]


def test_a_run_sent_again_completes_normally_when_a_worker_takes_it(
    cast: Cast, settings: Any, queued: list[dict[str, Any]], scripted_llm: Any
) -> None:
    settings.QUEUED_STALE_SECONDS = 60
    run = _ask(cast)
    _age(run, 61)
    services.runs_reap_stale()
    for call in queued:  # both tasks arrive: the claim lets one run it
        services.run_execute(run_id=call["args"][0])
    run.refresh_from_db()
    assert run.status == AgentRun.Status.COMPLETE and run.attempts == 1
    assert len(scripted_llm.calls) == 1
    assert LedgerEntry.objects.filter(run=run, kind=LedgerEntry.Kind.SETTLE).count() == 1


def test_a_held_run_is_not_unclaimed(
    cast: Cast, settings: Any, queued: list[dict[str, Any]]
) -> None:
    """Held back in its asker's line (never handed to the broker), a run waits its turn,
    however long: the line, not this reaper, dispatches it."""
    settings.QUEUED_STALE_SECONDS = 60
    settings.REPLY_CONCURRENCY_PER_USER = 1
    first = _ask(cast)
    held = _ask(cast, "held")
    assert held.dispatched_at is None
    AgentRun.objects.filter(pk=first.pk).update(status=AgentRun.Status.RUNNING)
    AgentRun.objects.filter(pk=first.pk).update(heartbeat_at=timezone.now())
    assert services.runs_reap_stale() == 0
    held.refresh_from_db()
    assert held.status == AgentRun.Status.QUEUED and held.redispatched_at is None
