"""A scripted crew model: a TEST DOUBLE, a real CrewAI `BaseLLM` (through agents.crew's
ProviderLLM) that replays, per agent, a script of replies: plain text, ReAct tool calls
(`Action:` / `Action Input:`) and final answers. Usage, streaming, stop and budget checks run
as for a real model. Never a runtime default: the `scripted_crew` fixture installs it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agents.crew import ProviderLLM
from agents.llm import ChatMessages, Completion


def tool_call(tool: str, thought: str = "I should use a tool.", **arguments: Any) -> str:
    """A ReAct tool call as CrewAI's text protocol expects it."""
    return f"Thought: {thought}\nAction: {tool}\nAction Input: {json.dumps(arguments)}"


def final(answer: str, thought: str = "I now know the final answer.") -> str:
    return f"Thought: {thought}\nFinal Answer: {answer}"


@dataclass
class CrewScript:
    """Replies per agent (planner, researcher, analyst, writer), used in order; an agent whose
    list runs out repeats `fallback`. `delay` seconds per call stands for a slow model."""

    replies: dict[str, list[str]] = field(default_factory=dict)
    fallback: str = final("Done.")
    delay: float = 0.0
    # Every call: (agent, the messages it got), to assert on what the model saw.
    calls: list[tuple[str, ChatMessages]] = field(default_factory=list)
    # Called before each reply: lets a test press stop mid-crew.
    before_call: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self, agent: str, chat: ChatMessages) -> str:
        with self.lock:
            self.calls.append((agent, chat))
            queue = self.replies.get(agent)
            return queue.pop(0) if queue else self.fallback


class ScriptedCrewLLM(ProviderLLM):
    script: ClassVar[CrewScript] = CrewScript()

    def _generate(self, chat: ChatMessages, completion: Completion) -> Iterator[str]:
        script = type(self).script
        if script.before_call is not None:
            script.before_call(self.agent_name)
        reply = script.next(self.agent_name, chat)
        if script.delay:
            time.sleep(script.delay)
        completion.usage.prompt_tokens = sum(len(m["content"].split()) + 4 for m in chat)
        return self._words(reply, completion)

    @staticmethod
    def _words(reply: str, completion: Completion) -> Iterator[str]:
        for index, word in enumerate(reply.split(" ")):
            completion.usage.completion_tokens += 1
            yield word if index == 0 else " " + word
