"""LLM providers: one interface, a stream of text pieces and a token count.

`local` runs the bundled SmolLM2 model in the worker with llama-cpp-python; `openai` talks to
any OpenAI-compatible server. Tests replace `get_provider` with a scripted provider.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from agents.models import AIModel

ChatMessages = list[dict[str, str]]


class LLMError(Exception):
    """A provider failure, worded for the user. `retryable`: trying again may succeed."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Completion:
    """What a stream leaves behind once iterated: the usage the provider reported or we counted."""

    usage: Usage = field(default_factory=Usage)


class Provider(Protocol):
    def stream(
        self, *, messages: ChatMessages, max_tokens: int, completion: Completion
    ) -> Iterator[str]:
        """Yield the reply in pieces; fill `completion.usage` as it goes. Closing the iterator
        early must stop generation."""
        ...

    def count_tokens(self, text: str) -> int: ...


_providers: dict[tuple[str, str], Provider] = {}
_lock = threading.Lock()


def get_provider(model: AIModel) -> Provider:
    """The provider for a catalog model, made once per process (the local model loads once)."""
    key = (model.provider, model.provider_model)
    with _lock:
        provider = _providers.get(key)
        if provider is None:
            if model.provider == "openai":
                from agents.llm.openai_compat import OpenAICompatibleProvider

                provider = OpenAICompatibleProvider(model_name=model.provider_model)
            else:
                from agents.llm.local import LocalProvider

                provider = LocalProvider()
            _providers[key] = provider
    return provider


def estimate_tokens(text: str) -> int:
    """An upper-bound guess used before the real tokenizer is at hand (reservations)."""
    return len(text) // 3 + 1
