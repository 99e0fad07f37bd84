"""Events applied to earlier state equal a fresh fetch (Zulip's verify_action, at scale).

alice and bob follow a thread over the WebSocket and fetch it over REST; a seeded random run of
posts, edits, deletes, renames, session-prompt changes and member changes goes through the REST
API; each follower folds the events it received into the state it fetched, and the result must
equal what REST returns at the end.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from rest_framework.test import APIClient

from chatproject.asgi import application
from tests.conftest import Cast
from tests.factories import UserFactory
from threads import services as thread_services
from threads.models import User

# Real commits, so on_commit publishes as in production.
pytestmark = pytest.mark.django_db(transaction=True)

API = "/api/v1"
TIMEOUT = 3.0
ACTIONS = 40
State = dict[str, Any]  # {"thread": <thread JSON>, "messages": {id: <message JSON>}}


# --- the reducer ----------------------------------------------------------------------------------


def apply(state: State, event: dict[str, Any]) -> None:
    """Fold one event into a client's state, as a client would."""
    kind, data = event["type"], event["data"]
    thread, messages = state["thread"], state["messages"]
    if kind == "chatThreadUpdate":
        state["thread"] = data
    elif kind == "chatMemberAdded":
        thread["members"] = [*thread["members"], data]
    elif kind == "chatMemberRemoved":
        thread["members"] = [m for m in thread["members"] if m["userId"] != data["userId"]]
    elif kind in {"chatMessageAdded", "chatMessageUpdated"}:
        messages[data["id"]] = data
    elif kind == "chatMessageDeleted":
        del messages[data["id"]]
    else:
        raise AssertionError(f"unexpected event {event}")


def comparable(state: State) -> dict[str, Any]:
    thread = state["thread"]
    return {
        "title": thread["title"],
        "sessionPrompt": thread["sessionPrompt"],
        "topicIds": thread["topicIds"],
        "members": thread["members"],
        "messages": sorted(state["messages"].values(), key=lambda m: m["seq"]),
    }


# --- REST as a client sees it ---------------------------------------------------------------------


class Rest:
    """Synchronous REST calls as each user, by token; run them through sync_to_async."""

    def __init__(self, users: dict[str, User]) -> None:
        self.users = users
        self.tokens = {name: thread_services.token_issue(user=u)[1] for name, u in users.items()}
        self.clients: dict[str, APIClient] = {}
        for name, raw in self.tokens.items():
            self.clients[name] = APIClient()
            self.clients[name].credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")

    def call(self, who: str, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        response = getattr(self.clients[who], method)(f"{API}{path}", body, format="json")
        assert response.status_code == status, (who, method, path, response.content[:300])
        return response.json() if response.content else None

    def fetch(self, thread_id: str) -> State:
        thread = self.call("alice", "get", f"/threads/{thread_id}/")
        messages: dict[str, Any] = {}
        after = 0
        while True:
            page = self.call(
                "alice", "get", f"/threads/{thread_id}/messages/?after={after}&limit=7"
            )
            messages.update((m["id"], m) for m in page["messages"])
            if not page["hasNewer"]:
                return {"thread": thread, "messages": messages}
            after = page["after"]


def random_action(rng: random.Random, rest: Rest, thread_id: str, now: State) -> str:
    """Make one random change over REST, chosen from what `now` (a fresh fetch) allows."""
    members = {m["username"] for m in now["thread"]["members"]}
    guests = sorted({"dave", "erin"} & members)
    outside = sorted({"dave", "erin"} - members)
    posters = ["alice", "bob", *guests]
    messages = sorted(now["messages"].values(), key=lambda m: m["seq"])
    editable = [m for m in messages if author(rest, m) in posters]
    choices = ["post", "post", "post", "rename", "prompt"]
    choices += ["edit", "edit", "delete"] if editable else []
    choices += ["add"] if outside else []
    choices += ["remove"] if guests else []
    kind = rng.choice(choices)
    body: dict[str, Any]
    if kind == "post":
        who = rng.choice(posters)
        body = {"text": f"{who} says {rng.randrange(10**6)}"}
        rest.call(who, "post", f"/threads/{thread_id}/messages/", body, status=201)
    elif kind == "edit":
        message = rng.choice(editable)
        body = {"text": f"edited {rng.randrange(10**6)}"}
        rest.call(author(rest, message), "patch", f"/messages/{message['id']}/", body)
    elif kind == "delete":
        message = rng.choice(editable)
        rest.call("alice", "delete", f"/messages/{message['id']}/", status=204)
    elif kind in {"rename", "prompt"}:
        field = "title" if kind == "rename" else "sessionPrompt"
        body = {field: f"{field} {rng.randrange(1000)}"}
        rest.call(rng.choice(["alice", "bob"]), "patch", f"/threads/{thread_id}/", body)
    elif kind == "add":
        body = {"userIds": [rng.choice(outside)]}
        rest.call("alice", "post", f"/threads/{thread_id}/members/", body)
    else:
        user_id = rest.users[rng.choice(guests)].pk
        rest.call("alice", "delete", f"/threads/{thread_id}/members/{user_id}/", status=204)
    return kind


def author(rest: Rest, message: dict[str, Any]) -> str:
    return next(name for name, user in rest.users.items() if user.pk == message["userId"])


# --- the test -------------------------------------------------------------------------------------


@pytest.fixture
def rest(cast: Cast) -> Rest:
    users = {
        "alice": cast.alice,
        "bob": cast.bob,
        "dave": UserFactory.create(username="dave"),
        "erin": UserFactory.create(username="erin"),
    }
    return Rest(users)


@pytest.fixture
async def followers(rest: Rest) -> AsyncIterator[Callable[[str], Any]]:
    opened: list[WebsocketCommunicator] = []

    async def follow(name: str) -> WebsocketCommunicator:
        comm = WebsocketCommunicator(application, f"/ws/v1/events/?token={rest.tokens[name]}")
        opened.append(comm)
        connected, _ = await comm.connect(timeout=TIMEOUT)
        assert connected
        return comm

    yield follow
    for comm in opened:
        with contextlib.suppress(Exception):
            await comm.disconnect(timeout=TIMEOUT)
    await sync_to_async(connections.close_all)()


async def collect_until(comm: WebsocketCommunicator, thread_id: str, last_seq: int) -> list[Any]:
    events: list[dict[str, Any]] = []
    while not events or events[-1]["seq"] < last_seq:
        frame = await comm.receive_json_from(timeout=TIMEOUT)
        assert frame["threadId"] == thread_id, frame
        events.append(frame)
    return events


@pytest.mark.parametrize("seed", [20261123, 7])
async def test_events_applied_to_fetched_state_equal_a_fresh_fetch(
    cast: Cast, rest: Rest, followers: Callable[[str], Any], seed: int
) -> None:
    thread_id = cast.thread.pk
    for i in range(4):  # some history before anyone follows
        await sync_to_async(rest.call)(
            "bob", "post", f"/threads/{thread_id}/messages/", {"text": f"old {i}"}, 201
        )
    sockets = {name: await followers(name) for name in ("alice", "bob")}
    states: dict[str, State] = {}
    seen: dict[str, int] = {}  # the last event seq each follower has applied
    for name, comm in sockets.items():
        states[name] = await sync_to_async(rest.fetch)(thread_id)
        seen[name] = since = states[name]["thread"]["lastEventSeq"]
        await comm.send_json_to({"action": "subscribe", "threadId": thread_id, "lastSeq": since})
        ack = await comm.receive_json_from(timeout=TIMEOUT)
        assert ack == {"type": "subscribed", "threadId": thread_id, "seq": since}

    rng = random.Random(seed)
    fresh = await sync_to_async(rest.fetch)(thread_id)
    done = []
    for step in range(ACTIONS):
        kind = await sync_to_async(random_action)(rng, rest, thread_id, fresh)
        done.append(kind)
        fresh = await sync_to_async(rest.fetch)(thread_id)
        final_seq = fresh["thread"]["lastEventSeq"]
        # After every action, as Zulip's verify_action does: old state + events == fresh fetch.
        for name, comm in sockets.items():
            received = await collect_until(comm, thread_id, final_seq)
            expected_seqs = list(range(seen[name] + 1, final_seq + 1))
            assert [e["seq"] for e in received] == expected_seqs, (name, step, kind)
            for event in received:
                apply(states[name], event)
            seen[name] = final_seq
            assert comparable(states[name]) == comparable(fresh), (name, step, kind)

    # The run exercised every kind of change (the seed is fixed; this guards a future edit).
    assert set(done) == {"post", "edit", "delete", "rename", "prompt", "add", "remove"}, done
    for comm in sockets.values():
        assert await comm.receive_nothing(timeout=0.2)
