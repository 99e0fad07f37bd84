"""A client that drops its connection at 20 points of a reply and resumes with its last seq
ends with the reply's text byte-identical to the stored message, and with no numbered event
missing or doubled.

Twenty clients follow one reply; each drops its connection at a different point (when the text
it holds reaches 0, 10, ..., 180 tokens, or all 200 but before the terminal event), waits a
moment while deltas go by, and subscribes again from its last seq. Two replies: a point cut
cleanly (a close frame) in the first is cut abruptly (the TCP connection aborted) in the
second, and the other way round. Plain messages are posted into the thread meanwhile, so the
resume has numbered events to make up for.
"""

from __future__ import annotations

import asyncio

import httpx
import psycopg
import pytest

from tests.faults.conftest import Stack, add_models, assert_no_reply_left_open
from tests.faults.followers import Follower, post_notes, seq_problems

pytestmark = [pytest.mark.integration, pytest.mark.faults]

REPLIES = 2
TOKENS = 200
CUT_POINTS = [*range(0, 190, 10), TOKENS]  # tokens held when the client drops its connection


async def _reply_with_cuts(stack: Stack, reply: int) -> list[float]:
    """One reply, one client per cut point; the seconds each took from its cut to subscribed
    again (its pause included)."""
    base = stack.server
    async with httpx.AsyncClient(headers=stack.headers, timeout=10) as api:
        created = await api.post(f"{base.http}/api/v1/threads/", json={"title": f"cut {reply}"})
        thread_id = created.json()["id"]
        followers = [
            Follower(name=f"cut@{tokens}", thread_id=thread_id, headers=stack.headers)
            for tokens in CUT_POINTS
        ]
        await asyncio.gather(*(f.open(base) for f in followers))
        stop_notes = asyncio.Event()
        notes = asyncio.create_task(post_notes(base.http, stack.headers, thread_id, stop_notes))
        posted = await api.post(
            f"{base.http}/api/v1/threads/{thread_id}/messages/",
            json={"text": "count", "reply": True, "modelId": "mdl_long"},
        )
        assert posted.status_code == 201, posted.text
        reply_id = posted.json()["reply"]["messageId"]
        for follower in followers:
            follower.reply_id = reply_id
        await asyncio.gather(
            *(
                f.follow(lambda: base, cut_at_tokens=tokens, abrupt=(n + reply) % 2 == 1)
                for n, (f, tokens) in enumerate(zip(followers, CUT_POINTS, strict=True))
            )
        )
        stop_notes.set()
        assert await notes > 0
    with psycopg.connect(stack.database_url) as db:
        text, status = db.execute(
            "SELECT text, status FROM messaging_message WHERE id = %s", [reply_id]
        ).fetchone() or (None, None)
    assert status == "complete" and isinstance(text, str) and text.count(" t") == TOKENS
    problems = [p for f in followers for p in seq_problems(f)]
    problems += [f"{f.name}: {m}" for f in followers for m in f.misfits]
    assert problems == []
    for follower in followers:
        assert follower.text.encode() == text.encode(), follower.name
        assert follower.connections == 2, (follower.name, follower.connections)
    return [r for f in followers for r in f.recoveries]


def test_a_client_cut_off_at_20_points_of_a_reply_resumes_it_byte_identical(
    stack: Stack,
) -> None:
    add_models(stack.env, {"mdl_long": f"rate-50-n{TOKENS}"})
    recoveries = [asyncio.run(_reply_with_cuts(stack, reply)) for reply in range(REPLIES)]
    assert_no_reply_left_open(stack.database_url)
    print(
        f"{len(CUT_POINTS)} cut points x {REPLIES} replies resumed; cut to subscribed again"
        f" (0.3 s pause included): {min(min(r) for r in recoveries):.2f}"
        f"-{max(max(r) for r in recoveries):.2f} s"
    )
