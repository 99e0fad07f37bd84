"""The per-user reply cap and fair scheduling (agents.services.lines), with the scripted test LLM.

Runs are queued through the `queued` fixture (captured, not run) and then run in the order a
FIFO broker would hand them out, so the tests assert order, never time.
"""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.db import connection, transaction

from agents import services
from agents.models import Account, AgentRun, LedgerEntry
from agents.selectors import model_for_request
from agents.services import conversation
from chatproject.asgi import application
from messaging.models import Message
from tests.conftest import Cast
from tests.messaging.compat.conftest import Exchange, act, http, tokens  # noqa: F401 - fixtures used below
from threads.errors import ReplyQueueFull
from threads.models import Thread

pytestmark = pytest.mark.django_db(transaction=True)


def _ask(cast: Cast, user: Any = None, text: str = "What is 2+2?", **extra: Any) -> Any:
    return cast.client(user or cast.alice).post(
        f"/api/v1/threads/{cast.thread.pk}/messages/",
        {"text": text, "reply": True, **extra},
        format="json",
    )


def _run_ids(sent: list[dict[str, Any]]) -> list[str]:
    return [call["args"][0] for call in sent]


def _run_of(response: Any) -> AgentRun:
    assert response.status_code == 201, response.content
    return AgentRun.objects.get(pk=response.json()["reply"]["runId"])


def _drain(sent: list[dict[str, Any]]) -> list[str]:
    """Run every queued task in the order a FIFO broker hands them to one worker, including
    the ones that finishing runs queue; the run ids in the order they ran."""
    ran: list[str] = []
    while len(ran) < len(sent):
        run_id = sent[len(ran)]["args"][0]
        ran.append(run_id)
        services.run_execute(run_id=run_id)
    return ran


@pytest.fixture
def cap2(settings: Any) -> None:
    settings.REPLY_CONCURRENCY_PER_USER = 2
    settings.REPLY_QUEUE_PER_USER = 20


def test_past_the_cap_replies_wait_queued_and_are_not_published(cast, cap2, queued):
    runs = [_run_of(_ask(cast, text=f"question {n}")) for n in range(5)]
    # Two went to the broker; three are held back, still `queued`, each saying how many wait
    # before it.
    assert _run_ids(queued) == [runs[0].pk, runs[1].pk]
    for position, run in enumerate(runs[2:]):
        run.refresh_from_db()
        assert run.status == AgentRun.Status.QUEUED and run.dispatched_at is None
        assert run.message.status == Message.Status.QUEUED
        assert run.message.meta["waiting"]["ahead"] == position
    assert "waiting" not in runs[0].message.meta
    # What a client reads: the AI message is `queued`, its meta says why.
    shown = cast.client(cast.alice).get(f"/api/v1/messages/{runs[4].message_id}/").json()
    assert shown["status"] == "queued"
    assert shown["meta"]["waiting"] == {
        "reason": "You have 2 replies being written; this one waits for its turn.",
        "ahead": 2,
    }


def test_held_replies_are_dispatched_in_order_as_the_users_replies_finish(
    cast, cap2, queued, scripted_llm
):
    runs = [_run_of(_ask(cast, text=f"question {n}")) for n in range(5)]
    assert _drain(queued) == [run.pk for run in runs]
    for run in runs:
        run.refresh_from_db()
        assert run.status == AgentRun.Status.COMPLETE
        # The wait note went when the reply got its turn.
        assert "waiting" not in run.message.meta
    assert len(queued) == 5  # each run published once


def test_one_users_backlog_does_not_hold_back_another_users_reply(cast, cap2, queued, scripted_llm):
    alice_runs = [_run_of(_ask(cast, text=f"alice {n}")) for n in range(10)]
    bob_run = _run_of(_ask(cast, user=cast.bob, text="bob's only question"))
    alice_ids = {run.pk for run in alice_runs}
    order: list[str] = []
    while len(order) < len(queued):
        # The broker never holds more than two of alice's runs that have not run yet.
        in_broker = [r for r in _run_ids(queued)[len(order) :] if r in alice_ids]
        assert len(in_broker) <= 2
        order.append(queued[len(order)]["args"][0])
        services.run_execute(run_id=order[-1])
    # bob's reply runs right after the two of alice's already going, before all of her
    # backlog: it waits for no more than one reply's worth of work per worker.
    assert order[:3] == [alice_runs[0].pk, alice_runs[1].pk, bob_run.pk]
    assert order[3:] == [run.pk for run in alice_runs[2:]]


def test_past_the_queue_limit_the_request_is_refused_with_no_side_effect(cast, settings, queued):
    settings.REPLY_CONCURRENCY_PER_USER = 1
    settings.REPLY_QUEUE_PER_USER = 2
    for n in range(3):
        _run_of(_ask(cast, text=f"question {n}"))
    balance = Account.objects.get(user=cast.alice).balance
    before = (Message.objects.count(), AgentRun.objects.count(), LedgerEntry.objects.count())
    thread_seq = Thread.objects.get(pk=cast.thread.pk).last_message_seq

    for extra in ({}, {"id": "msg_client_chosen_1"}):  # the unlocked and the locked check
        refused = _ask(cast, text="one too many", **extra)
        assert refused.status_code == 429
        body = refused.json()
        assert body["error"]["code"] == "reply_queue_full"
        assert "3 AI replies" in body["error"]["message"]
        assert int(refused["Retry-After"]) >= 1
    assert (Message.objects.count(), AgentRun.objects.count(), LedgerEntry.objects.count()) == (
        before
    )
    assert Account.objects.get(user=cast.alice).balance == balance
    assert Thread.objects.get(pk=cast.thread.pk).last_message_seq == thread_seq
    assert len(queued) == 1
    # Another user is not refused, and a post that asks for no reply goes through.
    assert _ask(cast, user=cast.bob).status_code == 201
    plain = cast.client(cast.alice).post(
        f"/api/v1/threads/{cast.thread.pk}/messages/", {"text": "no reply"}, format="json"
    )
    assert plain.status_code == 201


def test_retry_after_estimates_from_the_users_recent_replies(cast, settings, queued):
    settings.REPLY_CONCURRENCY_PER_USER = 1
    settings.REPLY_QUEUE_PER_USER = 0
    done = _run_of(_ask(cast, text="a finished one"))
    from datetime import timedelta

    from django.utils import timezone

    finished = timezone.now()
    AgentRun.objects.filter(pk=done.pk).update(
        status=AgentRun.Status.COMPLETE,
        started_at=finished - timedelta(seconds=40),
        finished_at=finished,
    )
    running = _run_of(_ask(cast, text="a running one"))
    AgentRun.objects.filter(pk=running.pk).update(
        status=AgentRun.Status.RUNNING, started_at=timezone.now() - timedelta(seconds=10)
    )
    refused = _ask(cast, text="refused")
    # About 40 s per reply, 10 s into the running one: about 30 s to wait.
    assert 25 <= int(refused["Retry-After"]) <= 31


def test_regenerate_is_refused_the_same_way(cast, settings, queued, scripted_llm):
    settings.REPLY_CONCURRENCY_PER_USER = 1
    settings.REPLY_QUEUE_PER_USER = 0
    first = _run_of(_ask(cast))
    _drain(queued)
    _run_of(_ask(cast, text="keeps the place"))
    refused = cast.client(cast.alice).post(f"/api/v1/messages/{first.message_id}/regenerate/")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "reply_queue_full"


def test_stopping_a_held_reply_cancels_it_and_frees_nothing_it_did_not_hold(
    cast, cap2, queued, scripted_llm
):
    runs = [_run_of(_ask(cast, text=f"question {n}")) for n in range(4)]
    balance = Account.objects.get(user=cast.alice).balance
    held = runs[2]
    stopped = cast.client(cast.alice).post(f"/api/v1/messages/{held.message_id}/stop/")
    assert stopped.status_code == 200 and stopped.json()["status"] == "cancelled"
    held.refresh_from_db()
    assert held.status == AgentRun.Status.CANCELLED and held.cost == 0
    # The reservation came back whole, and no other reply took a place it never held.
    assert Account.objects.get(user=cast.alice).balance == balance + held.reserved
    assert _run_ids(queued) == [runs[0].pk, runs[1].pk]
    # The line moves on without it.
    assert _drain(queued) == [runs[0].pk, runs[1].pk, runs[3].pk]


def test_stopping_a_dispatched_reply_gives_its_place_to_the_next(cast, cap2, queued):
    runs = [_run_of(_ask(cast, text=f"question {n}")) for n in range(3)]
    cast.client(cast.alice).post(f"/api/v1/messages/{runs[0].message_id}/stop/")
    assert _run_ids(queued) == [runs[0].pk, runs[1].pk, runs[2].pk]


def test_the_reaper_dispatches_held_replies_that_have_a_free_place(cast, settings, queued):
    settings.REPLY_CONCURRENCY_PER_USER = 1
    runs = [_run_of(_ask(cast, text=f"question {n}")) for n in range(3)]
    assert _run_ids(queued) == [runs[0].pk]
    assert services.runs_reap_stale() == 0  # nothing stranded: the line is full
    # The operator raises the cap: nothing finishes to dispatch the held ones; the reaper does.
    settings.REPLY_CONCURRENCY_PER_USER = 3
    assert services.runs_reap_stale() == 2
    assert _run_ids(queued) == [run.pk for run in runs]
    assert services.runs_reap_stale() == 0


def test_a_held_reply_whose_running_reply_was_deleted_is_not_stranded(cast, settings, queued):
    settings.REPLY_CONCURRENCY_PER_USER = 1
    other, _ = conversation.thread_start(user=cast.alice, title="Other")
    going = _run_of(_ask(cast))
    held = _run_of(
        cast.client(cast.alice).post(
            f"/api/v1/threads/{other.pk}/messages/", {"text": "hi", "reply": True}, format="json"
        )
    )
    # The thread with the running reply goes, and the run with it: nothing ends it.
    services.thread_delete(thread=Thread.objects.get(pk=cast.thread.pk))
    assert not AgentRun.objects.filter(pk=going.pk).exists()
    assert services.runs_reap_stale() == 1
    assert _run_ids(queued) == [going.pk, held.pk]


def test_a_stray_task_for_a_held_run_does_not_run_it(cast, settings, queued, scripted_llm):
    settings.REPLY_CONCURRENCY_PER_USER = 1
    _run_of(_ask(cast))
    held = _run_of(_ask(cast, text="held"))
    services.run_execute(run_id=held.pk)
    held.refresh_from_db()
    assert held.status == AgentRun.Status.QUEUED and scripted_llm.calls == []


# --- the refusal on the other doors ---------------------------------------------------------


def _fill_alices_line(cast: Cast, settings: Any) -> None:
    settings.REPLY_CONCURRENCY_PER_USER = 1
    settings.REPLY_QUEUE_PER_USER = 0
    _run_of(_ask(cast))


def test_chat_svc_answers_its_own_error_shape_with_retry_after(cast, settings, queued):
    _fill_alices_line(cast, settings)
    Thread.objects.filter(pk=cast.thread.pk).update(ai_reply=True)
    before = Message.objects.count()
    refused = cast.client(cast.alice).post(
        f"/chat-svc/thread/{cast.thread.pk}/message", {"text": "hi AI"}, format="json"
    )
    assert refused.status_code == 429
    assert set(refused.json()) == {"error"} and "AI replies" in refused.json()["error"]
    assert int(refused["Retry-After"]) >= 1
    assert Message.objects.count() == before


async def test_the_bff_refuses_before_the_stream_with_retry_after(
    cast,
    settings,
    queued,
    http: Exchange,  # noqa: F811 - the fixture
):
    await act(_fill_alices_line, cast, settings)
    before = await act(Message.objects.count)
    answer = await http(
        "POST",
        "/api/v1/chat/messages",
        user="alice",
        json_body={"sessionId": cast.thread.pk, "message": "hi"},
    )
    assert answer.status == 429
    assert int(answer.headers[b"retry-after"]) >= 1
    assert (await answer.json())["error"]["code"] == "reply_queue_full"
    # A new session asked for in the same breath is not left behind either.
    again = await http("POST", "/api/v1/chat/messages", user="alice", json_body={"message": "hi"})
    assert again.status == 429
    assert await act(Message.objects.count) == before
    assert await act(Thread.objects.count) == 1


async def test_ai_at_work_answers_its_own_error_frame(cast, settings, queued, tokens):  # noqa: F811
    await act(_fill_alices_line, cast, settings)
    before = await act(Message.objects.count)
    comm = WebsocketCommunicator(application, f"/ws?token={tokens['alice']}")
    connected, _ = await comm.connect(timeout=5)
    assert connected
    try:
        frame = {"type": 3, "data": {"session_id": cast.thread.pk, "message": "hi"}}
        await comm.send_to(text_data=json.dumps(frame))
        answer = await comm.receive_json_from(timeout=5)
    finally:
        await comm.disconnect(timeout=5)
    assert set(answer) == {"error"} and "AI replies" in answer["error"]
    assert await act(Message.objects.count) == before


# --- PostgreSQL: the cap under real concurrency ---------------------------------------------


def test_concurrent_requests_never_dispatch_past_the_cap(cast, settings, queued):
    if connection.vendor != "postgresql":
        pytest.skip("row locks under real concurrency need PostgreSQL")
    settings.REPLY_CONCURRENCY_PER_USER = 2
    settings.REPLY_QUEUE_PER_USER = 10
    services.credit_add(user=cast.alice, amount=Decimal("100"), note="plenty")
    model = model_for_request(user=cast.alice, model_ref=None)
    outcomes: list[str] = []
    start = threading.Barrier(30)

    def ask() -> None:
        try:
            start.wait()
            with transaction.atomic():
                services.reply_request(
                    thread=cast.thread, requester=cast.alice, request_message=None, model=model
                )
            outcomes.append("ok")
        except ReplyQueueFull:
            outcomes.append("full")
        finally:
            connection.close()

    threads = [threading.Thread(target=ask) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("ok") == 12 and outcomes.count("full") == 18
    runs = AgentRun.objects.filter(requested_by=cast.alice)
    assert runs.filter(dispatched_at__isnull=False).count() == 2
    assert len(queued) == 2

    # Now the two dispatched ones end while more are asked for, all at once: still two.
    going = list(runs.filter(dispatched_at__isnull=False))
    start = threading.Barrier(len(going) + 4)

    def stop(run: AgentRun) -> None:
        try:
            start.wait()
            services.run_stop(message=run.message, actor=cast.alice)
        finally:
            connection.close()

    workers = [threading.Thread(target=stop, args=(run,)) for run in going]
    workers += [threading.Thread(target=ask) for _ in range(4)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    unfinished = runs.filter(status__in=["queued", "running"])
    assert unfinished.filter(dispatched_at__isnull=False).count() == 2
    assert len(set(_run_ids(queued))) == 4


def test_concurrent_reapers_never_dispatch_past_the_cap(cast, settings, queued):
    if connection.vendor != "postgresql":
        pytest.skip("row locks under real concurrency need PostgreSQL")
    settings.REPLY_CONCURRENCY_PER_USER = 1
    for n in range(10):
        _run_of(_ask(cast, text=f"question {n}"))
    # The cap is raised: every process's reaper sees alice's free places at once. Only the
    # line lock stands between them (no account, no thread is locked on this path).
    settings.REPLY_CONCURRENCY_PER_USER = 3
    start = threading.Barrier(6)

    def reap() -> None:
        try:
            start.wait()
            services.runs_reap_stale()
        finally:
            connection.close()

    reapers = [threading.Thread(target=reap) for _ in range(6)]
    for thread in reapers:
        thread.start()
    for thread in reapers:
        thread.join()
    runs = AgentRun.objects.filter(requested_by=cast.alice)
    assert runs.filter(dispatched_at__isnull=False).count() == 3
    assert len(queued) == 3
