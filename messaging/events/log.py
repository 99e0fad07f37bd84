"""The event log: `record()` numbers an event, keeps it in the thread's log (messaging.ThreadEvent)
and publishes it after commit; `log_since()` reads back what a client missed.

`record()` runs inside the writer's transaction: it takes the thread's next event seq (under the
thread row's lock) and appends to the log in the same transaction. So the log and the database
never disagree, `seq` follows commit order, and a client that missed something reads it back
from the log by number.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.utils import timezone

from messaging.events.catalog import EventType, encode, event_make
from messaging.events.publish import publish_on_commit, thread_group, user_group
from messaging.models import ThreadEvent
from threads.services import thread_seq_take

# How many events per thread a reconnecting client can catch up on; older gaps get `resync`.
EVENT_LOG_KEEP = 1000
_PRUNE_EVERY = 100


def next_seq(thread_id: str) -> int:
    """Take the thread's next event seq. Call inside a transaction: the UPDATE locks the thread
    row until commit, which is what makes seq order the commit order."""
    return thread_seq_take(thread_id=thread_id, message=False)[1]


def record(
    *,
    thread_id: str,
    type: EventType,
    data: dict[str, Any],
    seq: int | None = None,
    also_to_users: Iterable[str] = (),
    log: bool = True,
) -> dict[str, Any]:
    """Log an event and publish it to the thread's subscribers after commit.

    Must run inside the transaction that makes the change. `seq` may be passed when the caller
    already took it (message_post takes it in the same UPDATE as the message seq).
    `also_to_users` also delivers it to those users' own streams; `log=False` is for the event
    that deletes the thread (its log goes with it).
    """
    if seq is None:
        seq = next_seq(thread_id)
    event = event_make(type=type, thread_id=thread_id, seq=seq, data=data)
    if settings.DEBUG or getattr(settings, "TESTING", False):
        # Fail here, not in a consumer far away, if something is not JSON.
        event = json.loads(encode(event))
    if log:
        ThreadEvent.objects.create(
            thread_id=thread_id, seq=seq, type=str(type), data=data, created_at=timezone.now()
        )
        if seq % _PRUNE_EVERY == 0:
            ThreadEvent.objects.filter(thread_id=thread_id, seq__lte=seq - EVENT_LOG_KEEP).delete()
    publish_on_commit(event, groups=[thread_group(thread_id), *map(user_group, also_to_users)])
    return event


def log_since(*, thread_id: str, after_seq: int) -> tuple[list[dict[str, Any]], bool]:
    """The logged events of a thread after `after_seq`, oldest first, and whether the log
    still reaches back that far (False: the caller must resync)."""
    rows = list(
        ThreadEvent.objects.filter(thread_id=thread_id, seq__gt=after_seq)
        .order_by("seq")
        .values_list("seq", "type", "data")
    )
    complete = not rows or rows[0][0] == after_seq + 1
    events = [event_make(type=t, thread_id=thread_id, seq=s, data=d) for s, t, d in rows]
    return events, complete
