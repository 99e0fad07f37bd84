"""Producing a reply in the worker: claim the run, ask the model, stream, close; and the
reaper for runs whose worker vanished.

Every step is idempotent per run, so a redelivered task never charges twice; a run whose worker
vanished is re-run once or failed by `runs_reap_stale`.
"""

from __future__ import annotations

import functools
import logging
import time
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from agents import context, housekeeping, llm
from agents.llm import Completion, LLMError, Usage, open_stream
from agents.models import AgentMode, AgentRun
from agents.services.crew_runs import (
    CREW_WAIT_SECONDS,
    crew_execute,
    crew_slot_take,
    crew_wait_note,
)
from agents.services.finish import TERMINAL, run_finish
from agents.services.lines import enqueue, lines_fill_stranded
from agents.services.streaming import Stream, flush, pump
from messaging import services as messaging_services
from messaging.livetext import live_text_set
from messaging.models import Message

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 2


class Wait:
    """The run must wait for a free crew slot."""


WAIT = Wait()


def claim(run_id: str) -> AgentRun | Wait | None:
    """Take the run for this worker; None if it is finished or alive elsewhere, WAIT if it is a
    crew and every crew slot is busy."""
    stale_before = timezone.now() - timedelta(seconds=settings.RUN_STALE_SECONDS)
    with transaction.atomic():
        run = (
            AgentRun.objects.select_for_update(of=("self",))
            .select_related("model", "thread", "message", "request_message", "requested_by")
            .filter(pk=run_id)
            .first()
        )
        if run is None or run.status in TERMINAL:
            return None
        if run.dispatched_at is None:
            return None  # held in its asker's line: run_finish or the reaper dispatches it
        if (
            run.status == AgentRun.Status.RUNNING
            and run.heartbeat_at is not None
            and run.heartbeat_at > stale_before
        ):
            return None  # another worker holds it and is alive
        if run.cancel_requested:
            run_finish(run=run, text=run.message.text, status=AgentRun.Status.CANCELLED)
            return None
        if run.mode == AgentMode.CREW and not crew_slot_take(run):
            crew_wait_note(run)
            # Sent again below, after a pause: waiting for a slot is not sitting unclaimed.
            run.dispatched_at = timezone.now()
            run.save(update_fields=["dispatched_at"])
            return WAIT
        if run.message.meta.get("waiting") is not None:
            # It waited (its asker's line, or a crew slot) and now has its turn.
            messaging_services.message_meta_update(message=run.message, meta={"waiting": None})
        now = timezone.now()
        run.status = AgentRun.Status.RUNNING
        run.attempts += 1
        run.started_at = run.started_at or now
        run.heartbeat_at = now
        run.save(update_fields=["status", "attempts", "started_at", "heartbeat_at"])
        run.message._file_ids = []  # an AI reply has no attachments: no query for them
        messaging_services.message_set_status(
            message=run.message, status=Message.Status.STREAMING, text=""
        )
        live_text_set(message_id=run.message_id, text="")
    return run


def run_execute(*, run_id: str) -> None:
    """Produce one reply. Safe to call again for the same run (redelivery, retries).

    The task is queued when the post commits, so the run is there to claim; the model is
    asked only once the claim has committed, so a stop or a second delivery never reaches it."""
    run = claim(run_id)
    if run is None or isinstance(run, Wait):
        if isinstance(run, Wait):
            enqueue(run_id, crew=True, countdown=CREW_WAIT_SECONDS)
        return
    stream = Stream(run=run, seq=run.thread.last_event_seq)
    completion = Completion()
    stream.completion = completion
    status, error = AgentRun.Status.COMPLETE, ""
    started = time.monotonic()
    # Looked up on agents.llm when used, so the scripted test model installed there is asked.
    provider = llm.get_provider(run.model)
    if run.mode == AgentMode.CREW:
        outcome = crew_execute(run=run, stream=stream, provider=provider, started=started)
        flush(stream)
        _run_close(
            run=run,
            stream=stream,
            status=outcome.status,
            error=outcome.error,
            usage=outcome.usage,
            meta=outcome.meta,
            provider=provider,
        )
        return
    try:
        for attempt in range(2):
            try:
                messages = context.build(run=run, count_tokens=provider.count_tokens)
                pieces = open_stream(
                    provider,
                    messages=messages,
                    max_tokens=run.model.max_output_tokens,
                    completion=completion,
                    turn=functools.partial(context.turn, run=run, messages=messages),
                )
                cancelled = pump(stream, pieces, started)
                if cancelled:
                    status = AgentRun.Status.CANCELLED
                break
            except LLMError as exc:
                # Retry only when nothing reached anyone yet; otherwise the text would fork.
                if attempt == 0 and exc.retryable and not stream.parts:
                    logger.info("retrying run %s after: %s", run.pk, exc.message)
                    continue
                raise
    except LLMError as exc:
        status, error = AgentRun.Status.FAILED, exc.message
    except (OperationalError, InterfaceError) as exc:
        if not stream.parts:
            # The database went away before the model said anything (building the prompt,
            # say): nothing is lost by asking again, so the run is left to the reaper, which
            # re-runs it once its heartbeat is stale and the database answers again.
            logger.warning("run %s: database lost before the first token: %s", run.pk, exc)
            connection.close()
            return
        logger.exception("run %s failed", run.pk)
        status, error = AgentRun.Status.FAILED, "The reply failed because of an internal error."
    except Exception:
        logger.exception("run %s failed", run.pk)
        status, error = AgentRun.Status.FAILED, "The reply failed because of an internal error."
    flush(stream)
    _run_close(
        run=run,
        stream=stream,
        status=status,
        error=error,
        usage=completion.usage,
        meta={},
        provider=provider,
        reported_cost=completion.cost,
    )


def _run_close(
    *,
    run: AgentRun,
    stream: Stream,
    status: str,
    error: str,
    usage: Usage,
    meta: dict[str, Any],
    provider: Any,
    reported_cost: Decimal | None = None,
) -> None:
    """End the run with what it produced. The text is already complete here, so a database that
    stops answering costs a wait, not the answer: the close is retried (each try one whole
    transaction, on a fresh connection) for CLOSE_RETRY_SECONDS. Generating again, which the
    reaper would otherwise do, gives a different answer and throws this one away."""
    deadline = time.monotonic() + settings.CLOSE_RETRY_SECONDS
    pause = 0.25
    while True:
        try:
            locked = _run_close_once(
                run=run,
                stream=stream,
                status=status,
                error=error,
                usage=usage,
                meta=meta,
                reported_cost=reported_cost,
            )
            break
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + pause > deadline:
                raise
            logger.warning("closing run %s failed (%s); retrying in %.2f s", run.pk, exc, pause)
            connection.close()  # back to the pool, which drops it if it is broken
            time.sleep(pause)
            pause = min(pause * 2, 4.0)
    if locked is not None and status == AgentRun.Status.COMPLETE:
        _upkeep(locked, provider)


def _run_close_once(
    *,
    run: AgentRun,
    stream: Stream,
    status: str,
    error: str,
    usage: Usage,
    meta: dict[str, Any],
    reported_cost: Decimal | None,
) -> AgentRun | None:
    with transaction.atomic():
        locked = (
            AgentRun.objects.select_for_update(of=("self",))
            .select_related("model", "message", "requested_by", "thread")
            .get(pk=run.pk)
        )
        if locked.status in TERMINAL:
            return None  # the reaper or a stop already ended it
        if locked.attempts != run.attempts:
            return None  # claimed again (this worker looked lost): that attempt's answer stands
        # Also when the reaper has put it back in the queue during a long outage but nobody has
        # claimed it yet: this answer is whole, and the queued task will find the run ended.
        locked.message._file_ids = []  # an AI reply has no attachments: no query for them
        locked.prompt_tokens = usage.prompt_tokens
        locked.completion_tokens = usage.completion_tokens
        run_finish(
            run=locked,
            text=stream.text,
            status=status,
            error=error,
            meta=meta,
            reported_cost=reported_cost,
        )
    return locked


def _upkeep(run: AgentRun, provider: Any) -> None:
    """Title and summary after a finished reply; a failure here never touches the reply."""
    try:
        housekeeping.title_if_untitled(run=run, provider=provider)
        housekeeping.summary_refresh(run=run, provider=provider)
    except Exception:
        logger.exception("upkeep after run %s failed", run.pk)


def runs_reap_stale() -> int:
    """Runs whose worker stopped sending heartbeats: run again once, then fail; and held runs
    whose asker has a free place are dispatched. Returns how many were handled. Safe to run in
    many processes at once (rows are locked, skipped if busy)."""
    stale_before = timezone.now() - timedelta(seconds=settings.RUN_STALE_SECONDS)
    handled = 0
    candidates = list(
        AgentRun.objects.filter(
            status=AgentRun.Status.RUNNING, heartbeat_at__lt=stale_before
        ).values_list("pk", flat=True)[:100]
    )
    for run_id in candidates:
        with transaction.atomic():
            run = (
                AgentRun.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("model", "message", "requested_by", "thread")
                .filter(pk=run_id, status=AgentRun.Status.RUNNING, heartbeat_at__lt=stale_before)
                .first()
            )
            if run is None:
                continue
            handled += 1
            if run.attempts < MAX_ATTEMPTS and not run.cancel_requested:
                run.status = AgentRun.Status.QUEUED
                run.heartbeat_at = None
                run.dispatched_at = timezone.now()
                run.save(update_fields=["status", "heartbeat_at", "dispatched_at"])
                messaging_services.message_set_status(
                    message=run.message, status=Message.Status.QUEUED, text=""
                )
                transaction.on_commit(
                    functools.partial(enqueue, run.pk, crew=run.mode == AgentMode.CREW)
                )
            else:
                run_finish(
                    run=run,
                    text=run.message.text,
                    status=AgentRun.Status.FAILED,
                    error="The worker writing this reply stopped; please try again.",
                )
    handled += _runs_reap_unclaimed()
    # After the re-runs: a run failed above gives its place back (run_finish dispatches then);
    # this catches held runs nothing will end a run for (the cap raised, a thread deleted).
    handled += lines_fill_stranded()
    return handled


def _runs_reap_unclaimed() -> int:
    """Runs handed to the broker that no worker claimed in QUEUED_STALE_SECONDS: the task is
    gone (a broker restart without persistence empties its queues) or stuck. Sent once more;
    one that goes unclaimed again is failed, which releases its reservation and gives its
    asker's place to their next held reply. A second task for a run that was only slow is
    harmless: the claim lets one of them run it."""
    stale_before = timezone.now() - timedelta(seconds=settings.QUEUED_STALE_SECONDS)
    candidates = list(
        AgentRun.objects.filter(
            status=AgentRun.Status.QUEUED, dispatched_at__lt=stale_before
        ).values_list("pk", flat=True)[:100]
    )
    handled = 0
    for run_id in candidates:
        with transaction.atomic():
            run = (
                AgentRun.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("model", "message", "requested_by", "thread")
                .filter(pk=run_id, status=AgentRun.Status.QUEUED, dispatched_at__lt=stale_before)
                .first()
            )
            if run is None:
                continue
            handled += 1
            if run.redispatched_at is None and not run.cancel_requested:
                logger.warning("run %s sat unclaimed; sending it to the broker again", run.pk)
                run.dispatched_at = run.redispatched_at = timezone.now()
                run.save(update_fields=["dispatched_at", "redispatched_at"])
                transaction.on_commit(
                    functools.partial(enqueue, run.pk, crew=run.mode == AgentMode.CREW)
                )
            else:
                logger.warning("run %s was never claimed by a worker; failing it", run.pk)
                run_finish(
                    run=run,
                    text=run.message.text,
                    status=AgentRun.Status.FAILED,
                    error="No worker picked this reply up (its queued task was lost); "
                    "please try again.",
                )
    return handled
