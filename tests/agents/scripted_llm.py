"""A scripted LLM provider: a TEST DOUBLE that replays a script of text pieces (and failures),
so the whole reply flow runs deterministically. Never a runtime default: tests install it by
monkeypatching agents.llm.get_provider (see the `scripted_llm` fixture)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

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
