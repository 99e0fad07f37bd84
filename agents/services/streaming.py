"""A reply as it streams: the text as it grows, the deltas sent in batches, the partial text
and the heartbeat saved beside it, and a stop noticed while the model is silent.

`pump` reads the model on the worker's thread; the `Pacer` thread sends, saves and watches
meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from agents.llm import Completion, LLMError
from agents.models import AgentRun
from messaging import events
from messaging.events import EventType
from messaging.livetext import live_text_set
from messaging.models import Message
from threads.models import Thread

logger = logging.getLogger(__name__)


@dataclass
class Stream:
    """The reply as it grows, and what has been sent and saved of it."""

    run: AgentRun
    # The model call in progress (its `abort` cuts a stalled stream when stop is pressed);
    # a crew has several, by id.
    completion: Completion | None = None
    crew_calls: dict[int, Completion] = field(default_factory=dict)
    parts: list[str] = field(default_factory=list)
    written: int = 0  # characters appended, by the thread reading the model
    sent: int = 0  # characters announced in deltas
    saved: int = 0  # characters saved to the database
    seq: int = 0
    # When the oldest text not yet sent arrived (None: all sent).
    batch_started: float | None = None
    # Flushes come from the pacer thread and, at the end, from the worker's own.
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def text(self) -> str:
        return "".join(self.parts)


def pump(stream: Stream, pieces: Any, started: float) -> bool:
    """Read the model into the stream; True if the user pressed stop. The pacer thread sends,
    saves and watches meanwhile, so a stalled model neither delays text already written nor
    hides the run's pulse."""
    window = settings.STREAM_FLUSH_MS / 1000
    pacer = Pacer(stream, window=window)
    pacer.start()
    try:
        try:
            for piece in pieces:
                append(stream, pacer, window, piece)
                if pacer.cancelled.is_set():
                    return True
                if time.monotonic() - started > settings.RUN_TIME_LIMIT_SECONDS:
                    raise LLMError("The reply took too long and was stopped.")
        except Exception:
            if pacer.cancelled.is_set():
                return True  # the pacer cut the stream because stop was pressed
            raise
        return pacer.cancelled.is_set()
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()  # stops the model generating
        pacer.stop()


def append(stream: Stream, pacer: Pacer, window: float, piece: str) -> None:
    """Add text to the reply; send it now or leave it to the pacer's next batch."""
    with stream.lock:
        stream.parts.append(piece)
        stream.written += len(piece)
        opens_batch = stream.batch_started is None
        if opens_batch:
            stream.batch_started = time.monotonic()
    if window == 0 or stream.sent == 0:
        # Batching off, or the reply's first words: out at once (time to first token).
        flush(stream)
    elif opens_batch:
        pacer.wake.set()


class Pacer(threading.Thread):
    """Beside a running reply: sends each batch of text when it is `window` old, saves the
    partial text and the heartbeat every so often, and notices a stop request. It sleeps until
    one of those is due, so an idle or slow reply costs nothing."""

    HEARTBEAT_EVERY = 1.0

    def __init__(self, stream: Stream, *, window: float) -> None:
        super().__init__(name=f"pacer-{stream.run.pk}", daemon=True)
        self.stream = stream
        self.window = window
        self.wake = threading.Event()
        self.cancelled = threading.Event()
        self._done = False

    def _abort_model(self) -> None:
        """Cut the model's stream if it is stalled: the reading thread then sees stop at once
        instead of when the provider times out."""
        with self.stream.lock:
            calls = [self.stream.completion, *self.stream.crew_calls.values()]
        for completion in calls:
            if completion is not None and completion.abort is not None:
                try:
                    completion.abort()
                except Exception:
                    logger.exception("run %s: could not cut a model stream", self.stream.run.pk)

    def stop(self) -> None:
        self._done = True
        self.wake.set()
        self.join(timeout=5)

    def run(self) -> None:
        save_every = max(min(settings.STREAM_SAVE_MS / 1000, self.HEARTBEAT_EVERY), 0.01)
        next_save = time.monotonic() + save_every
        try:
            while not self._done:
                now = time.monotonic()
                due = next_save
                batch_started = self.stream.batch_started
                if batch_started is not None and self.window:
                    due = min(due, batch_started + self.window)
                if due > now:
                    self.wake.wait(due - now)
                    self.wake.clear()
                    continue
                try:
                    batch_started = self.stream.batch_started
                    if (
                        batch_started is not None
                        and self.window
                        and now >= batch_started + self.window
                    ):
                        flush(self.stream)
                    if now >= next_save:
                        next_save = now + save_every
                        if save_progress(self.stream) and not self.cancelled.is_set():
                            self.cancelled.set()
                            self._abort_model()
                except (OperationalError, InterfaceError) as exc:
                    # The database restarted: this thread's connection is dead for good, and
                    # Django would hand it out again. Closed, the next round takes a new one.
                    logger.warning("pacer of run %s: database: %s", self.stream.run.pk, exc)
                    connection.close()
                except Exception:
                    # A busy database or a lost Redis connection for a moment must not end
                    # the pulse of the reply; the next round tries again.
                    logger.exception("pacer of run %s: a round failed", self.stream.run.pk)
        finally:
            connection.close()


def flush(stream: Stream) -> None:
    with stream.lock:
        text = stream.text
        if len(text) == stream.sent:
            return
        stream.batch_started = None
        stream.parts = [text]  # one piece again: the next join copies less
        # Readable before it is announced: a client that fetches the message after
        # subscribing then holds every character of the deltas it did not receive.
        # The store holds text[:sent] from the last flush: only the rest is written.
        live_text_set(message_id=stream.run.message_id, text=text, kept=stream.sent)
        events.publish_transient(
            thread_id=stream.run.thread_id,
            type=EventType.MESSAGE_DELTA,
            data={
                "messageId": stream.run.message_id,
                "offset": stream.sent,
                "text": text[stream.sent :],
            },
            seq=stream.seq,
        )
        stream.sent = len(text)


def save_progress(stream: Stream) -> bool:
    """Save the partial text and the heartbeat; return whether stop was asked for.

    Every STREAM_SAVE_MS beside a streaming reply, so it is kept small: one transaction (one
    commit to wait for), and the heartbeat, the stop flag and the thread's seq in one statement.
    The Python it runs holds the interpreter lock that the thread reading the model needs, and
    its rounds were where a delta's worst delays came from."""
    text = stream.text
    now = timezone.now()
    with transaction.atomic():
        if len(text) != stream.saved:
            Message.objects.filter(pk=stream.run.message_id).update(text=text, updated_at=now)
        cancel_requested, seq = _run_pulse(
            run_id=stream.run.pk, thread_id=stream.run.thread_id, now=now
        )
    stream.saved = len(text)
    stream.seq = seq or stream.seq
    return cancel_requested


def _run_pulse(*, run_id: str, thread_id: str, now: datetime) -> tuple[bool, int]:
    """Beat the run's heartbeat; return (stop asked for, the thread's last event seq).
    (UPDATE ... RETURNING, which the ORM cannot say.)"""
    run_table = connection.ops.quote_name(AgentRun._meta.db_table)
    thread_table = connection.ops.quote_name(Thread._meta.db_table)
    sql = (
        f"UPDATE {run_table} SET heartbeat_at = %s WHERE id = %s"  # noqa: S608 - model names
        f" RETURNING cancel_requested, (SELECT last_event_seq FROM {thread_table} WHERE id = %s)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [connection.ops.adapt_datetimefield_value(now), run_id, thread_id])
        row = cursor.fetchone()
    if row is None:
        raise AgentRun.DoesNotExist(run_id)
    return bool(row[0]), int(row[1] or 0)
