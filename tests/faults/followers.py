"""A WebSocket client that follows a thread the way docs/events.md tells clients to, for the
fault scenarios that cut its connection (test_daphne_kill.py, test_client_disconnect.py).

It keeps the last numbered seq it saw; after a lost connection it subscribes again with
`lastSeq`, then fetches the reply (whose text is readable before each delta is published) and
places the deltas that follow by their offset. What it saw is kept for the assertions: every
numbered seq in the order it arrived, the reply's text as rebuilt, and any delta that did not
fit the text it held.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets
from websockets.exceptions import ConnectionClosed

from tests.integration.conftest import Server

CONNECT_TRIES = 50


@dataclass
class Follower:
    name: str
    thread_id: str
    headers: dict[str, str]
    reply_id: str | None = None
    seqs: list[int] = field(default_factory=list)  # numbered events, as they arrived
    texts: dict[str, str] = field(default_factory=dict)  # message id: text rebuilt from deltas
    misfits: list[str] = field(default_factory=list)  # deltas that did not fit the text held
    terminal: dict[str, Any] | None = None  # the reply's chatMessageCompleted
    connections: int = 0
    lost_at: float | None = None
    recoveries: list[float] = field(default_factory=list)  # lost to subscribed again, seconds
    subscribed_at: list[float] = field(default_factory=list)  # time.monotonic() of each
    socket: websockets.ClientConnection | None = None

    @property
    def last_seq(self) -> int | None:
        return self.seqs[-1] if self.seqs else None

    @property
    def text(self) -> str:
        return self.texts.get(self.reply_id or "", "")

    async def open(self, server: Server) -> None:
        """Connect and subscribe (from the last seq seen, if any); after a reconnect, fetch the
        reply as it stands, as a client that may have missed deltas must."""
        resuming = self.connections > 0
        for attempt in range(CONNECT_TRIES):
            try:
                self.socket = await websockets.connect(
                    f"{server.ws}/ws/v1/events/", additional_headers=self.headers
                )
                break
            except (OSError, websockets.InvalidHandshake):
                if attempt == CONNECT_TRIES - 1:
                    raise
                await asyncio.sleep(0.1)
        assert self.socket is not None
        self.connections += 1
        frame: dict[str, Any] = {"action": "subscribe", "threadId": self.thread_id}
        if self.last_seq is not None:
            frame["lastSeq"] = self.last_seq
        await self.socket.send(json.dumps(frame))
        while True:
            event = json.loads(await self.socket.recv())
            if event.get("type") == "subscribed":
                self.subscribed_at.append(time.monotonic())
                break
            assert event.get("type") != "error", event
            self._take(event)  # the user's own stream (another thread); nothing of ours
        if self.lost_at is not None:
            self.recoveries.append(time.monotonic() - self.lost_at)
            self.lost_at = None
        if resuming and self.reply_id is not None:
            async with httpx.AsyncClient(headers=self.headers, timeout=10) as api:
                response = await api.get(f"{server.http}/api/v1/messages/{self.reply_id}/")
                response.raise_for_status()
            self._place(self.reply_id, 0, response.json()["text"])

    async def follow(
        self,
        servers: Callable[[], Server],
        *,
        cut_at_tokens: int | None = None,
        abrupt: bool = False,
        pause: float = 0.3,
        within: float = 60.0,
    ) -> None:
        """Read until the reply's terminal event. A connection the server loses is opened again
        on `servers()`; with `cut_at_tokens`, the client itself drops the connection once its
        text holds that many tokens (`abrupt`: the TCP connection is cut, no close frame), waits
        `pause` and resumes."""
        deadline = time.monotonic() + within
        cut_done = cut_at_tokens is None
        while self.terminal is None:
            assert time.monotonic() < deadline, f"{self.name}: no terminal event"
            if self.socket is None:
                await self.open(servers())
                if not cut_done and self._cut_due(cut_at_tokens):
                    await self._cut(abrupt, pause)
                    cut_done = True
                continue
            try:
                event = json.loads(await asyncio.wait_for(self.socket.recv(), 1.0))
            except TimeoutError:
                continue
            except ConnectionClosed:
                self.lost_at = self.lost_at or time.monotonic()
                self.socket = None
                continue
            self._take(event)
            if not cut_done and self.terminal is None and self._cut_due(cut_at_tokens):
                await self._cut(abrupt, pause)
                cut_done = True
        if self.socket is not None:
            await self.socket.close()
            self.socket = None
        assert cut_done, f"{self.name}: the reply ended before {cut_at_tokens} tokens"

    def _cut_due(self, tokens: int | None) -> bool:
        return tokens is not None and self.text.count(" t") >= tokens

    async def _cut(self, abrupt: bool, pause: float) -> None:
        assert self.socket is not None
        if abrupt:
            self.socket.transport.abort()
        else:
            await self.socket.close()
        self.socket = None
        self.lost_at = time.monotonic()
        await asyncio.sleep(pause)  # deltas go by meanwhile: the resume must make up for them

    def _take(self, event: dict[str, Any]) -> None:
        if event.get("threadId") != self.thread_id:
            return
        data = event.get("data") or {}
        kind = event.get("type")
        if kind == "chatMessageDelta":
            self.reply_id = self.reply_id or data["messageId"]
            self._place(data["messageId"], data["offset"], data["text"])
            return
        self.seqs.append(int(event["seq"]))
        if kind == "chatMessageCompleted":
            message = data["message"]
            if message["id"] == (self.reply_id or message["id"]):
                self.terminal = event

    def _place(self, message_id: str, offset: int, text: str) -> None:
        """Put `text` at `offset`: what overlaps the text held must agree with it, and nothing
        may start past its end (a hole the client could not fill)."""
        held = self.texts.get(message_id, "")
        if offset > len(held):
            self.misfits.append(f"{message_id}: a delta at {offset} past the {len(held)} held")
            return
        overlap = held[offset : offset + len(text)]
        if not text.startswith(overlap):
            self.misfits.append(f"{message_id}: a delta at {offset} disagrees with the text held")
            return
        if offset + len(text) > len(held):
            self.texts[message_id] = held[:offset] + text


def seq_problems(follower: Follower) -> list[str]:
    """Numbered events missing or doubled between the first one the follower saw and the
    reply's terminal event (nothing after it counts: the follower stopped reading there)."""
    assert follower.terminal is not None
    end = int(follower.terminal["seq"])
    seen = follower.seqs[: follower.seqs.index(end) + 1]
    problems = []
    if len(seen) != len(set(seen)):
        problems.append(f"doubled: {sorted({s for s in seen if seen.count(s) > 1})}")
    if seen != sorted(seen):
        problems.append("out of order")
    missing = sorted(set(range(seen[0], end + 1)) - set(seen))
    if missing:
        problems.append(f"missing: {missing}")
    return [f"{follower.name}: {problem}" for problem in problems]


async def post_notes(
    base: str, headers: dict[str, str], thread_id: str, stop: asyncio.Event
) -> int:
    """Plain messages into the thread until `stop`: numbered events among the reply's deltas,
    so that resuming from a seq has something to make up for. Returns how many."""
    posted = 0
    async with httpx.AsyncClient(headers=headers, timeout=10) as api:
        while not stop.is_set():
            answer = await api.post(
                f"{base}/api/v1/threads/{thread_id}/messages/",
                json={"text": f"note {posted}", "reply": False},
            )
            assert answer.status_code == 201, answer.text
            posted += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.15)
    return posted
