"""LLM providers: one interface, a stream of text pieces and a token count.

`local` runs the bundled SmolLM2 model in the worker with llama-cpp-python; `openai` talks to
any OpenAI-compatible server; `grpc_agent` hands the whole turn to an external agent over gRPC
(AI-at-Work's AIService.Process), which answers with its text and what the turn cost. Tests
replace `get_provider` with a scripted provider.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Protocol, cast

if TYPE_CHECKING:
    from agents.models import AIModel

logger = logging.getLogger(__name__)

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
    """What a stream leaves behind once iterated: the usage the provider reported or we counted,
    and, for a provider that prices its own work (an agent), the cost it reported. A cost here
    replaces the token price in the ledger (agents.services.finish.run_finish)."""

    usage: Usage = field(default_factory=Usage)
    cost: Decimal | None = None
    # Set by a provider whose stream can block: cuts the stream from another thread, so a stop
    # pressed while the model is silent ends the reply now, not at the provider's timeout.
    abort: Callable[[], None] | None = None


@dataclass(frozen=True)
class Turn:
    """One chat turn as an agent that runs the whole turn itself is told it (grpc_agent): who
    asks, where, what, and the context the thread holds."""

    user_id: str
    session_id: str
    chat_message: str
    model_name: str
    model_provider: str
    session_prompt: str
    file_names: list[str]
    chat_summary: str
    chat_history: ChatMessages
    balance: Decimal


class Provider(Protocol):
    def stream(
        self, *, messages: ChatMessages, max_tokens: int, completion: Completion
    ) -> Iterator[str]:
        """Yield the reply in pieces; fill `completion.usage` as it goes. Closing the iterator
        early must stop generation."""
        ...

    def count_tokens(self, text: str) -> int: ...


class TurnProvider(Protocol):
    """A provider that wants the whole turn (the agent contract) rather than chat messages."""

    def stream_turn(
        self, *, turn: Turn, messages: ChatMessages, max_tokens: int, completion: Completion
    ) -> Iterator[str]: ...


def open_stream(
    provider: Provider,
    *,
    messages: ChatMessages,
    max_tokens: int,
    completion: Completion,
    turn: Callable[[], Turn],
) -> Iterator[str]:
    """The reply's pieces from any provider. `turn` is built (it reads the database) only for
    a provider that takes turns."""
    # Asked of the class, not the instance: a test double that answers every attribute
    # (unittest.mock) must not pass for an agent.
    if hasattr(type(provider), "stream_turn"):
        return cast(TurnProvider, provider).stream_turn(
            turn=turn(), messages=messages, max_tokens=max_tokens, completion=completion
        )
    return provider.stream(messages=messages, max_tokens=max_tokens, completion=completion)


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
            elif model.provider == "grpc_agent":
                from agents.llm.grpc_agent import GrpcAgentProvider

                provider = GrpcAgentProvider()
            else:
                from agents.llm.local import LocalProvider

                provider = LocalProvider()
            _providers[key] = provider
    return provider


def providers_warm_up() -> None:
    """Make the providers of the remote models in the catalog before any reply needs them:
    the OpenAI SDK's import and its lazily built resources take most of a second, which a
    worker's first asker otherwise waited through before the model was even asked. The
    bundled model is left to load on first use (it is memory, not just time)."""
    from django.db import connection

    from agents.models import AIModel

    try:
        for model in AIModel.objects.filter(provider="openai"):
            provider = get_provider(model)
            warm_up = getattr(provider, "warm_up", None)
            if warm_up is not None:
                warm_up()
    except Exception:
        logger.warning("warming up the model providers failed", exc_info=True)
    finally:
        connection.close()


def providers_warm_up_in_background() -> threading.Thread:
    thread = threading.Thread(target=providers_warm_up, name="providers-warm-up", daemon=True)
    thread.start()
    return thread


def estimate_tokens(text: str) -> int:
    """An upper-bound guess used before the real tokenizer is at hand (reservations)."""
    return len(text) // 3 + 1
