"""The AI participant: asking for a reply, producing it in a worker, stopping it, paying for it.

A reply is an AI message (author empty, `meta.modelId` / `meta.platformId`) plus an AgentRun.
`reply_request` makes both inside the asker's transaction and reserves the most the reply can
cost; on commit the run's id is queued; a Celery worker runs `run_execute`, which claims the
run, asks the model, streams its text as transient `chatMessageDelta` events, saves the partial
text every STREAM_SAVE_MS, and finishes in one transaction: final text and status, usage, the
ledger settled to the real token count, and a `chatMessageCompleted` event.

One module a job, each importing only those before it:

- `ledger`: accounts, credit, what a reply costs and may cost, the settlement;
- `lines`: each user's reply line (the per-user cap, held runs, queueing a run's id);
- `finish`: the end of a run (message, usage, money, event), and the line moving on;
- `replies`: asking, asking again, stopping;
- `streaming`: the growing text, its deltas, partial saves and heartbeat;
- `artifacts`: artifacts and the thread delete that removes their bytes;
- `crew_runs`: crew slots and the crew run;
- `runs`: the worker's claim, execute and close, and the reaper;
- `conversation`: what every door does to a conversation (post with or without a reply, start,
  open a session, revise, delete, read history); doors import the module itself.

The names below are the ones other code uses: `from agents.services import X` keeps working.
"""

from agents.services.artifacts import artifact_save, thread_delete
from agents.services.crew_runs import CREW_WAIT_SECONDS
from agents.services.finish import TERMINAL
from agents.services.ledger import account_lock, credit_add, most_a_reply_can_cost, reply_cost
from agents.services.replies import (
    CREW_RESERVED_CALLS,
    agent_mode_for,
    reply_regenerate,
    reply_request,
    run_stop,
)
from agents.services.runs import run_execute, runs_reap_stale

__all__ = [
    "CREW_RESERVED_CALLS",
    "CREW_WAIT_SECONDS",
    "TERMINAL",
    "account_lock",
    "agent_mode_for",
    "artifact_save",
    "credit_add",
    "most_a_reply_can_cost",
    "reply_cost",
    "reply_regenerate",
    "reply_request",
    "run_execute",
    "run_stop",
    "runs_reap_stale",
    "thread_delete",
]
