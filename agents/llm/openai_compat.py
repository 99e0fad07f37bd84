"""Any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp's server, Workers AI)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
from django.conf import settings

from agents.llm import ChatMessages, Completion, LLMError, estimate_tokens


class OpenAICompatibleProvider:
    def __init__(self, *, model_name: str) -> None:
        import openai

        if not settings.LLM_BASE_URL and not settings.LLM_API_KEY:
            raise LLMError("The AI service is not configured (LLM_BASE_URL / LLM_API_KEY).")
        self.model_name = model_name or settings.LLM_MODEL
        self.client = openai.OpenAI(
            base_url=settings.LLM_BASE_URL or None,
            api_key=settings.LLM_API_KEY or "not-needed",
            timeout=settings.LLM_TIMEOUT_SECONDS,
            max_retries=0,  # run_execute decides about retries: only before any text went out
        )

    def warm_up(self) -> None:
        # The SDK builds its resources on first access (a quarter of a second here).
        _ = self.client.chat.completions.with_streaming_response

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def stream(
        self, *, messages: ChatMessages, max_tokens: int, completion: Completion
    ) -> Iterator[str]:
        import openai

        try:
            # The raw server-sent events, not the SDK's parsed chunks: building a pydantic
            # model per token was half the worker's CPU per token. The SDK still makes the
            # request and turns HTTP errors into its exceptions.
            response = self.client.chat.completions.with_streaming_response.create(
                model=self.model_name,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                stream=True,
            ).__enter__()
        except openai.APITimeoutError as exc:
            raise LLMError("The AI service did not answer in time.", retryable=True) from exc
        except openai.APIConnectionError as exc:
            raise LLMError("The AI service cannot be reached.", retryable=True) from exc
        except openai.APIStatusError as exc:
            raise LLMError(
                f"The AI service refused the request ({exc.status_code}).",
                retryable=exc.status_code >= 500 or exc.status_code == 429,
            ) from exc
        completion.usage.prompt_tokens = sum(estimate_tokens(m["content"]) + 4 for m in messages)
        # Closing the response from the pacer thread breaks a read that waits on a silent model.
        completion.abort = response.close
        try:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, `event:` names
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                if not isinstance(chunk, dict) or "error" in chunk:
                    raise ValueError(f"an error or a malformed event in the stream: {payload}")
                usage = chunk.get("usage")
                if usage:
                    completion.usage.prompt_tokens = usage.get("prompt_tokens", 0)
                    completion.usage.completion_tokens = usage.get("completion_tokens", 0)
                choices = chunk.get("choices")
                if not choices:
                    continue
                piece = (choices[0].get("delta") or {}).get("content")
                if piece:
                    completion.usage.completion_tokens += 1
                    yield piece
        except (httpx.HTTPError, ValueError, KeyError, AttributeError) as exc:
            raise LLMError("The AI service's answer broke off.", retryable=False) from exc
        finally:
            response.close()
