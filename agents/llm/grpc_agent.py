"""Bring your own agent: the turn goes to an external agent over gRPC (AI-at-Work's contract,
`AIService.Process` in agents/llm/proto/ai_service.proto) and its answer comes back whole.

The agent gets the question and the thread's context (session prompt, rolling summary, the last
turns as JSON, attached file names, the asker's balance) and answers with its text and what the
turn cost; that cost replaces the token price in the ledger
(agents.services.finish.run_finish), capped by the reservation like any reply. A timeout, an
unreachable agent or an agent error fails the reply with a reason a person can read.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import grpc
from django.conf import settings
from django.utils import timezone

from agents.llm import ChatMessages, Completion, LLMError, Turn, estimate_tokens
from agents.llm.proto import ai_service_pb2, ai_service_pb2_grpc

logger = logging.getLogger(__name__)

MICRO = Decimal("0.000001")
# gRPC's default is 4 MB; a long answer or a long history should not be what fails a turn.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

_channels: dict[str, grpc.Channel] = {}
_channels_lock = threading.Lock()


def _channel(target: str) -> grpc.Channel:
    """One channel per target per process: a channel multiplexes calls and reconnects itself."""
    with _channels_lock:
        channel = _channels.get(target)
        if channel is None:
            channel = _channels[target] = grpc.insecure_channel(
                target,
                options=[
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ],
            )
        return channel


def build_request(turn: Turn) -> ai_service_pb2.Request:
    request = ai_service_pb2.Request(
        user_id=turn.user_id,
        session_id=turn.session_id,
        chat_message=turn.chat_message,
        model_name=turn.model_name,
        model_provider=turn.model_provider,
        session_prompt=turn.session_prompt,
        file_name=turn.file_names,
        chat_summary=turn.chat_summary,
        chat_history=json.dumps(turn.chat_history, ensure_ascii=False),
        balance=float(turn.balance),
    )
    request.timestamp.FromDatetime(timezone.now())
    return request


def reported_cost(value: float) -> Decimal:
    """The agent's cost as ledger money; LLMError for a cost no ledger can take."""
    if not math.isfinite(value) or value < 0:
        raise LLMError(f"The agent reported an impossible cost ({value}).")
    try:
        # Through str(): the float's shortest form (0.0123, not 0.01229999...).
        return Decimal(str(value)).quantize(MICRO, rounding=ROUND_HALF_UP)
    except InvalidOperation as exc:  # pragma: no cover - finite floats always convert
        raise LLMError(f"The agent reported an impossible cost ({value}).") from exc


def _failure(exc: grpc.RpcError, target: str, timeout: int) -> LLMError:
    code: Any = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return LLMError(f"The agent did not answer within {timeout} seconds.")
    if code == grpc.StatusCode.UNAVAILABLE:
        return LLMError(f"The agent cannot be reached ({target}).", retryable=True)
    name = code.name if code is not None else "UNKNOWN"
    reason = f": {details.strip()[:300]}" if details.strip() else ""
    return LLMError(f"The agent failed ({name}){reason}")


class GrpcAgentProvider:
    """A TurnProvider (agents.llm.open_stream hands it the whole turn)."""

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def stream(
        self, *, messages: ChatMessages, max_tokens: int, completion: Completion
    ) -> Iterator[str]:
        # Titles and summaries (agents.housekeeping) ask the model directly; an agent is asked
        # only about the user's turns, where its cost is charged. Upkeep skips it.
        raise LLMError("An external agent answers chat turns only.")

    def stream_turn(
        self, *, turn: Turn, messages: ChatMessages, max_tokens: int, completion: Completion
    ) -> Iterator[str]:
        target = settings.AGENT_GRPC_TARGET
        timeout = settings.AGENT_GRPC_TIMEOUT_SECONDS
        if not target:
            raise LLMError("The external agent is not configured (AGENT_GRPC_TARGET).")
        request = build_request(turn)
        stub = ai_service_pb2_grpc.AIServiceStub(_channel(target))
        try:
            response: ai_service_pb2.Response = stub.Process(request, timeout=timeout)
        except grpc.RpcError as exc:
            failure = _failure(exc, target, timeout)
            logger.info("agent call for %s failed: %s", turn.session_id, failure.message)
            raise failure from exc
        # The cost is recorded before anything else is judged: work the agent did is charged
        # even when its answer is then refused.
        completion.cost = reported_cost(response.cost)
        completion.usage.prompt_tokens = sum(
            estimate_tokens(m["content"]) + 4 for m in turn.chat_history
        ) + estimate_tokens(turn.chat_message)
        completion.usage.completion_tokens = estimate_tokens(response.response_text)
        if not response.response_text.strip():
            raise LLMError("The agent answered with no text.")
        return iter([response.response_text])
