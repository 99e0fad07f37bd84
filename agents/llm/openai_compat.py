"""Any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp's server, Workers AI)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)

    def stream(
        self, *, messages: ChatMessages, max_tokens: int, completion: Completion
    ) -> Iterator[str]:
        import openai

        try:
            response: Any = self.client.chat.completions.create(
                model=self.model_name,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                stream=True,
            )
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
            for chunk in response:
                if getattr(chunk, "usage", None):
                    completion.usage.prompt_tokens = chunk.usage.prompt_tokens
                    completion.usage.completion_tokens = chunk.usage.completion_tokens
                if not chunk.choices:
                    continue
                piece = chunk.choices[0].delta.content
                if piece:
                    completion.usage.completion_tokens += 1
                    yield piece
        except (openai.APIError, httpx.HTTPError, ValueError) as exc:
            raise LLMError("The AI service's answer broke off.", retryable=False) from exc
        finally:
            response.close()
