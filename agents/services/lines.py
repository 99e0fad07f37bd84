"""Fair scheduling: each user's replies wait in their own line.

A user has at most REPLY_CONCURRENCY_PER_USER replies *dispatched* (handed to the broker, or
running) at once. A reply past that is held: its run stays `queued` with no `dispatched_at` and
no task exists for it, so however many a user asks for, the broker and every worker's prefetch
hold at most that many of theirs, and another user's reply waits behind at most one of theirs.
When one of the user's runs ends (`run_finish`) the oldest held run is dispatched, on commit;
the reaper dispatches any held run whose user has a free place and nothing left to end.
Past REPLY_QUEUE_PER_USER held runs a request is refused (`ReplyQueueFull`, 429).

Every decision to dispatch takes the user's `UserLine` row lock, so a post and a finish (or two
finishes) can never both see the same free place. Lock order, in every transaction that asks
for, ends or dispatches a run: the run's own row (a worker, a stop, the reaper), the thread,
the account, then the line. Held runs are taken with SKIP LOCKED, so a dispatch never waits on
another run's row (one being stopped, say), and their threads are not touched here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from statistics import fmean

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from agents.models import AgentMode, AgentRun, UserLine
from threads.errors import ReplyQueueFull

UNFINISHED = (AgentRun.Status.QUEUED, AgentRun.Status.RUNNING)
# retry_after when the user has no finished reply to estimate from.
DEFAULT_REPLY_SECONDS = 10.0


def enqueue(run_id: str, *, crew: bool = False, countdown: float = 0) -> None:
    """Queue the run's id for a worker (a crew on the crew queue). Called on commit, or by a
    worker or the reaper for a run that is already committed: never before its post commits."""
    from agents.tasks import run_agent

    queue = settings.CREW_QUEUE if crew else None
    run_agent.apply_async(args=(run_id,), queue=queue, countdown=countdown or None)


@dataclass(frozen=True)
class Place:
    """Where a new reply stands in its asker's line: dispatched at once, or held with `ahead`
    of the asker's replies waiting before it."""

    dispatch: bool
    ahead: int


def _counts(user_id: str) -> tuple[int, int]:
    """(dispatched, held) unfinished runs of the user, in one query."""
    counts = AgentRun.objects.filter(requested_by_id=user_id, status__in=UNFINISHED).aggregate(
        dispatched=Count("pk", filter=Q(dispatched_at__isnull=False)),
        held=Count("pk", filter=Q(dispatched_at__isnull=True)),
    )
    return int(counts["dispatched"]), int(counts["held"])


def _line_lock(*, user_id: str, skip_locked: bool = False) -> bool:
    """Lock the user's line row for this transaction (made on first use); False only when
    `skip_locked` and another transaction holds it."""
    query = UserLine.objects.select_for_update(skip_locked=skip_locked).filter(user_id=user_id)
    if query.first() is not None:
        return True
    # ON CONFLICT DO NOTHING: a concurrent first request waits on the other's insert, then
    # both lock the one row.
    UserLine.objects.bulk_create([UserLine(user_id=user_id)], ignore_conflicts=True)
    return query.first() is not None


def _queue_full(user_id: str) -> ReplyQueueFull:
    """The refusal, with a Retry-After of about when the user's next place frees: their recent
    replies' mean length, less how long their oldest running one has been going."""
    recent = list(
        AgentRun.objects.filter(
            requested_by_id=user_id,
            status=AgentRun.Status.COMPLETE,
            started_at__isnull=False,
            finished_at__isnull=False,
        )
        .order_by("-finished_at")
        .values_list("started_at", "finished_at")[:10]
    )
    typical = (
        fmean((end - start).total_seconds() for start, end in recent if start and end)
        if recent
        else DEFAULT_REPLY_SECONDS
    )
    oldest = (
        AgentRun.objects.filter(
            requested_by_id=user_id, status=AgentRun.Status.RUNNING, started_at__isnull=False
        )
        .order_by("started_at")
        .values_list("started_at", flat=True)
        .first()
    )
    elapsed = (timezone.now() - oldest).total_seconds() if oldest is not None else 0.0
    limit = settings.REPLY_CONCURRENCY_PER_USER + settings.REPLY_QUEUE_PER_USER
    return ReplyQueueFull(
        f"You already have {limit} AI replies being written or waiting; "
        "ask again when one has finished.",
        retry_after=max(1.0, typical - elapsed),
    )


def reply_queue_check(*, user_id: str) -> None:
    """Refuse a reply the user's line has no room for, before anything is written. Unlocked,
    so it only spares the work: `line_join` decides, under the lock."""
    dispatched, held = _counts(user_id)
    if dispatched + held >= settings.REPLY_CONCURRENCY_PER_USER + settings.REPLY_QUEUE_PER_USER:
        raise _queue_full(user_id)


def line_join(*, user_id: str) -> Place:
    """Lock the user's line and place a reply about to be made: dispatched at once when the user
    has a free place, else held; ReplyQueueFull when REPLY_QUEUE_PER_USER already wait.
    Call inside the transaction that creates the run, after the thread and account locks."""
    _line_lock(user_id=user_id)
    cap = settings.REPLY_CONCURRENCY_PER_USER
    dispatched, held = _counts(user_id)
    if held and dispatched < cap:
        # Held runs with free places (the cap was raised, a thread was deleted): they go first.
        line_fill(user_id=user_id)
        dispatched, held = _counts(user_id)
    if dispatched + held >= cap + settings.REPLY_QUEUE_PER_USER:
        raise _queue_full(user_id)
    return Place(dispatch=dispatched < cap and held == 0, ahead=held)


def line_fill(*, user_id: str, skip_locked: bool = False) -> int:
    """Dispatch the user's oldest held runs into their free places, on commit; how many.

    Call inside a transaction, after the thread and account locks (`run_finish` calls it once
    the run it ends is saved as ended). The reaper passes `skip_locked`: a line another
    transaction holds is being seen to already."""
    if not _line_lock(user_id=user_id, skip_locked=skip_locked):
        return 0
    dispatched, held = _counts(user_id)
    free = settings.REPLY_CONCURRENCY_PER_USER - dispatched
    if free <= 0 or not held:
        return 0
    runs = list(
        AgentRun.objects.select_for_update(skip_locked=True, of=("self",))
        .filter(requested_by_id=user_id, status=AgentRun.Status.QUEUED, dispatched_at__isnull=True)
        .order_by("created_at", "pk")
        .only("pk", "mode")[:free]
    )
    now = timezone.now()
    AgentRun.objects.filter(pk__in=[run.pk for run in runs]).update(dispatched_at=now)
    for run in runs:
        transaction.on_commit(functools.partial(enqueue, run.pk, crew=run.mode == AgentMode.CREW))
    return len(runs)


def lines_fill_stranded(*, limit: int = 100) -> int:
    """Dispatch held runs whose user has free places and nothing left to end that would
    dispatch them (the reaper's part); held runs of a deleted user go at once. How many."""
    dispatched = 0
    orphans = list(
        AgentRun.objects.filter(
            status=AgentRun.Status.QUEUED, dispatched_at__isnull=True, requested_by__isnull=True
        ).values_list("pk", "mode")[:limit]
    )
    for run_id, mode in orphans:
        with transaction.atomic():
            if AgentRun.objects.filter(pk=run_id, dispatched_at__isnull=True).update(
                dispatched_at=timezone.now()
            ):
                dispatched += 1
                transaction.on_commit(
                    functools.partial(enqueue, run_id, crew=mode == AgentMode.CREW)
                )
    # One query finds the stranded lines (normally none), so a reaper tick costs one query
    # however many users have replies waiting; line_fill checks again under the lock.
    stranded = (
        AgentRun.objects.filter(status__in=UNFINISHED, requested_by__isnull=False)
        .values("requested_by_id")
        .annotate(
            dispatched=Count("pk", filter=Q(dispatched_at__isnull=False)),
            held=Count("pk", filter=Q(dispatched_at__isnull=True)),
        )
        .filter(held__gt=0, dispatched__lt=settings.REPLY_CONCURRENCY_PER_USER)
        .order_by("requested_by_id")
        .values_list("requested_by_id", flat=True)[:limit]
    )
    for user_id in list(stranded):
        with transaction.atomic():
            dispatched += line_fill(user_id=user_id, skip_locked=True)
    return dispatched
