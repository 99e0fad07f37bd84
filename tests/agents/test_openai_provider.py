"""The `openai` provider reads the server-sent events itself: pieces, usage, errors."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import openai
import pytest

from agents.llm import Completion, LLMError
from agents.llm.openai_compat import OpenAICompatibleProvider

MESSAGES = [{"role": "user", "content": "hi"}]


def _chunk(content: str | None = None, **extra: object) -> str:
    body: dict[str, object] = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [] if content is None else [{"index": 0, "delta": {"content": content}}],
        **extra,
    }
    return f"data: {json.dumps(body)}\n\n"


def _provider(
    settings: object, handler: Callable[[httpx.Request], httpx.Response]
) -> OpenAICompatibleProvider:
    settings.LLM_BASE_URL = "http://llm.test/v1"  # type: ignore[attr-defined]
    provider = OpenAICompatibleProvider(model_name="m")
    provider.client = openai.OpenAI(
        base_url="http://llm.test/v1",
        api_key="k",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )
    return provider


def _sse(body: str, status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["stream"] is True
        return httpx.Response(status, text=body, headers={"content-type": "text/event-stream"})

    return handler


def test_pieces_and_usage_come_from_the_events(settings: object) -> None:
    body = (
        ": keep-alive\n\n"
        + _chunk("Hel")
        + _chunk("")
        + _chunk("lo")
        + _chunk(None, usage={"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9})
        + "data: [DONE]\n\n"
    )
    completion = Completion()
    pieces = list(
        _provider(settings, _sse(body)).stream(
            messages=MESSAGES, max_tokens=5, completion=completion
        )
    )
    assert pieces == ["Hel", "lo"]
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (7, 2)


def test_the_request_waits_for_the_first_read(settings: object) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return _sse(_chunk("x") + "data: [DONE]\n\n")(request)

    pieces = _provider(settings, handler).stream(
        messages=MESSAGES, max_tokens=5, completion=Completion()
    )
    assert calls == []
    assert list(pieces) == ["x"]
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("status", "retryable"), [(500, True), (429, True), (400, False), (401, False)]
)
def test_a_refusal_is_an_llm_error(settings: object, status: int, retryable: bool) -> None:
    provider = _provider(settings, _sse('{"error": {"message": "no"}}', status=status))
    with pytest.raises(LLMError) as caught:
        list(provider.stream(messages=MESSAGES, max_tokens=5, completion=Completion()))
    assert caught.value.message == f"The AI service refused the request ({status})."
    assert caught.value.retryable is retryable


def test_an_unreachable_server_is_retryable(settings: object) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(LLMError) as caught:
        list(
            _provider(settings, handler).stream(
                messages=MESSAGES, max_tokens=5, completion=Completion()
            )
        )
    assert caught.value.message == "The AI service cannot be reached."
    assert caught.value.retryable


@pytest.mark.parametrize(
    "bad",
    [
        "data: {not json\n\n",
        'data: {"error": {"message": "overloaded"}}\n\n',
        'data: {"choices": [{"delta": "oops"}]}\n\n',
    ],
)
def test_a_broken_stream_ends_with_what_was_written(settings: object, bad: str) -> None:
    pieces = _provider(settings, _sse(_chunk("ok") + bad)).stream(
        messages=MESSAGES, max_tokens=5, completion=Completion()
    )
    assert next(pieces) == "ok"
    with pytest.raises(LLMError) as caught:
        next(pieces)
    assert caught.value.message == "The AI service's answer broke off."
    assert not caught.value.retryable


@pytest.mark.django_db(transaction=True)
def test_worker_start_up_makes_the_remote_models_providers(
    settings: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents import llm
    from agents.models import AIModel

    settings.LLM_BASE_URL = "http://llm.test/v1"  # type: ignore[attr-defined]
    monkeypatch.setattr(llm, "_providers", {})
    warmed: list[str] = []
    monkeypatch.setattr(
        OpenAICompatibleProvider, "warm_up", lambda self: warmed.append(self.model_name)
    )
    AIModel.objects.create(
        id="mdl_remote", name="Remote", provider="openai", provider_model="remote-7b"
    )
    llm.providers_warm_up_in_background().join(10)
    assert warmed == ["remote-7b"]
    assert set(llm._providers) == {("openai", "remote-7b")}  # the bundled model is not loaded
