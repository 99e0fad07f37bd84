"""A scripted LLM provider: a TEST DOUBLE that replays a script of text pieces (and failures),
so the whole reply flow runs deterministically. Never a runtime default: tests install it by
monkeypatching agents.llm.get_provider (see the `scripted_llm` fixture)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agents.llm import ChatMessages, Completion, LLMError


@dataclass
class ScriptedProvider:
    pieces: list[str] = field(default_factory=lambda: ["Hello", ", ", "world", "."])
    # Raise this after yielding `fail_after` pieces (a broken stream), or before any (refusal).
    failure: LLMError | None = None
    fail_after: int = 0
    # Called before each piece: lets a test press stop or kill things mid-stream.
    before_piece: Callable[[int], None] | None = None
    calls: list[ChatMessages] = field(default_factory=list)
    closed: bool = False

    def count_tokens(self, text: str) -> int:
        return max(1, len(text.split()))

    def stream(
        self, *, messages: ChatMessages, max_tokens: int, completion: Completion
    ) -> Iterator[str]:
        self.calls.append(messages)
        completion.usage.prompt_tokens = sum(self.count_tokens(m["content"]) for m in messages)
        if self.failure is not None and self.fail_after == 0:
            raise self.failure
        return self._pieces(max_tokens, completion)

    def _pieces(self, max_tokens: int, completion: Completion) -> Iterator[str]:
        try:
            for index, piece in enumerate(self.pieces[:max_tokens]):
                if self.failure is not None and index == self.fail_after:
                    raise self.failure
                if self.before_piece is not None:
                    self.before_piece(index)
                completion.usage.completion_tokens += 1
                yield piece
        finally:
            self.closed = True


@dataclass
class RemoteScriptedProvider(ScriptedProvider):
    """A TEST DOUBLE of a model served elsewhere (the `openai` provider's `remote` flag): the
    scripted pieces, and a record of when the request went out and whether it was cut."""

    remote = True
    asked: threading.Event = field(default_factory=threading.Event)
    asked_in: list[str] = field(default_factory=list)
    aborted: threading.Event = field(default_factory=threading.Event)

    def stream(self, **kwargs: Any) -> Any:
        pieces = super().stream(**kwargs)
        kwargs["completion"].abort = self.aborted.set

        def sent_on_first_read() -> Any:
            # Like an HTTP stream: the request goes out when the first piece is asked for.
            self.asked_in.append(threading.current_thread().name)
            self.asked.set()
            yield from pieces

        return sent_on_first_read()


def wait_until_closed(provider: ScriptedProvider) -> None:
    """Give the early call's own thread a moment: it closes the stream once the model answers."""
    deadline = time.monotonic() + 5
    while not provider.closed and time.monotonic() < deadline:
        time.sleep(0.01)
