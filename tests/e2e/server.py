"""Threadline as `make run` serves it, with the LLM replaced by TEST DOUBLES, for the browser
tests.

    VAR_DIR=/tmp/somewhere python -m tests.e2e.server --port 8123

This is the real product in the embedded profile (chatproject.settings, SQLite under VAR_DIR,
the in-process Celery worker, the in-memory channel layer, daphne): only the model is fake, so
a browser test sees replies stream at a known pace with known text. It migrates, collects the
static files, seeds the cast (alice, bob, charlie) and two test models, writes what the tests
need to know to `VAR_DIR/e2e-seed.json`, installs the doubles and serves.

The doubles (nothing here is ever a runtime default; this module lives under tests/ only):

- `E2EScriptedProvider` answers every single-model reply, whatever the catalog model, by the
  question's text (the last user message, without its `alice: ` prefix):
  * starts with `echo:`  -> exactly the text after `echo:`, in ECHO_PIECES pieces;
  * contains `slow`      -> SLOW_PIECES pieces `word0 word1 …`, SLOW_PIECE_SECONDS apart (stop it);
  * anything else        -> `Hello from the scripted model. You said: <question>`, word by word,
                            PIECE_SECONDS apart.
  Title and summary upkeep calls get `Chat: <first words of the question>` and a fixed summary.
- `E2ECrewLLM` answers every crew model call (planner, analyst, researcher, writer): with a
  CSV/JSON file attached to the question the analyst calls make_chart and make_table on it;
  a question starting `toolxss:` puts the text after it into tool output (a summary from the
  researcher, chart and table titles from the analyst) and into the writer's answer.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agents.llm import ChatMessages, Completion

USERS = ("alice", "bob", "charlie")
# alice and bob may use the test models and have money for them; charlie is the outsider with
# only the default model and the starting balance.
FUNDED = ("alice", "bob")
CREDIT = Decimal("1000")
SEED_FILE = "e2e-seed.json"

CREW_MODEL = "e2e-crew"
PRICED_MODEL = "e2e-priced"

PIECE_SECONDS = 0.04
SLOW_PIECES = 300
SLOW_PIECE_SECONDS = 0.06
ECHO_PIECES = 5
# The crew double: a pause per model call, so agent steps are visible in a browser, and one
# per word of the writer's answer, so it streams in pieces.
CREW_CALL_SECONDS = 0.2
CREW_WORD_SECONDS = 0.03
CREW_SLOW_CALL_SECONDS = 1.0
CREW_SLOW_WORD_SECONDS = 0.2

ECHO = "echo:"
SLOW = "slow"
TOOL_XSS = "toolxss:"

# Environment that would switch the server away from the embedded profile, or into the unit
# tests' settings (where asgi.py does not start the worker).
NOT_EMBEDDED = ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "THREADLINE_TESTING", "USE_S3")
TELEMETRY_OFF = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "OTEL_SDK_DISABLED": "true",
    "CREWAI_TRACING_ENABLED": "false",
}


def password_for(username: str) -> str:
    return f"{username}-pass-e2e"


# --- the single-model double -------------------------------------------------------------------

# context.build sends each user turn as `username: text`; usernames never contain a colon.
_AUTHOR_PREFIX = re.compile(r"^[\w.@+-]+: ")


def question_of(messages: ChatMessages) -> str:
    """The asker's text: the last user message, without the `alice: ` that context.build adds."""
    for message in reversed(messages):
        if message["role"] == "user":
            return _AUTHOR_PREFIX.sub("", message["content"], count=1)
    return ""


def split_evenly(text: str, parts: int) -> list[str]:
    """`text` cut into at most `parts` pieces whose concatenation is exactly `text`."""
    if not text:
        return []
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


def words_of(text: str) -> list[str]:
    """Pieces of one word each, keeping the spaces, so they join back to `text`."""
    return re.findall(r"\S+\s*|\s+", text)


@dataclass
class E2EScriptedProvider:
    """TEST DOUBLE for an agents.llm provider: answers by the question's text (see the module
    docstring), paced like a model, counting tokens as tests/agents/scripted_llm.py does so
    priced models charge."""

    def count_tokens(self, text: str) -> int:
        return max(1, len(text.split()))

    def stream(
        self, *, messages: ChatMessages, max_tokens: int, completion: Completion
    ) -> Iterator[str]:
        from agents import housekeeping

        completion.usage.prompt_tokens = sum(self.count_tokens(m["content"]) for m in messages)
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
        question = question_of(messages)
        delay = PIECE_SECONDS
        if system == housekeeping.TITLE_PROMPT:
            # The user turn is `User: <question>\nAssistant: <answer>`: a title from the
            # question carries whatever it held into the thread list (XSS through titles).
            asked = question.removeprefix("User: ").split("\n", 1)[0]
            pieces, delay = ["Chat: " + " ".join(asked.split()[:5])], 0.0
        elif system == housekeeping.SUMMARY_PROMPT:
            pieces, delay = ["The scripted summary of earlier turns."], 0.0
        elif question.startswith(ECHO):
            pieces = split_evenly(question[len(ECHO) :], ECHO_PIECES)
        elif SLOW in question:
            pieces, delay = [f"word{i} " for i in range(SLOW_PIECES)], SLOW_PIECE_SECONDS
        else:
            pieces = words_of(f"Hello from the scripted model. You said: {question}")
        # Stop sets this (through Completion.abort) so a stopped reply ends between pieces
        # without waiting out the pause.
        aborted = threading.Event()
        completion.abort = aborted.set
        return self._paced(pieces[:max_tokens], delay, aborted, completion)

    @staticmethod
    def _paced(
        pieces: list[str], delay: float, aborted: threading.Event, completion: Completion
    ) -> Iterator[str]:
        for index, piece in enumerate(pieces):
            if index and delay and aborted.wait(delay):
                return
            completion.usage.completion_tokens += 1
            yield piece


# --- the crew double ---------------------------------------------------------------------------

_BRIEF_QUESTION = re.compile(
    r"The user's question: (.*?)\n\n(?:Do your part for this question\.|Write the reply)", re.S
)
_FILES_LINE = re.compile(r"^Files attached in this thread: (.*)$", re.M)
DATA_SUFFIXES = (".csv", ".json")
DATA_TYPES = ("text/csv", "application/json")


def crew_question(agent: str, chat: ChatMessages) -> str:
    """The user's question as this agent was shown it: the planner gets it as its user message,
    the other agents inside the task brief crew.run writes."""
    if agent == "planner":
        return next((m["content"] for m in reversed(chat) if m["role"] == "user"), "")
    found = _BRIEF_QUESTION.findall("\n".join(m["content"] for m in chat))
    return str(found[-1]) if found else ""


def data_file_for(question: str, chat: ChatMessages) -> str | None:
    """The CSV/JSON file the question came with, as a reference the tools accept: its id,
    found through the run in the database (names may be anything, an XSS payload included);
    else a data file's name from the brief's `Files attached` line."""
    from django.db import connection

    from agents.models import AgentRun

    try:
        run = (
            AgentRun.objects.filter(
                mode="crew",
                status__in=[AgentRun.Status.QUEUED, AgentRun.Status.RUNNING],
                request_message__text=question,
            )
            .select_related("request_message")
            .order_by("-created_at")
            .first()
        )
        files = list(run.request_message.files.all()) if run and run.request_message else []
    finally:
        # CrewAI runs concurrent agents on threads of its own: leave no connection open there.
        if not connection.in_atomic_block:
            connection.close()
    for file in files:
        if file.name.lower().endswith(DATA_SUFFIXES) or file.content_type in DATA_TYPES:
            return str(file.pk)
    line = _FILES_LINE.findall("\n".join(m["content"] for m in chat))
    names = [n.strip() for n in line[-1].split(",")] if line else []
    return next((n for n in names if n.lower().endswith(DATA_SUFFIXES)), None)


def crew_reply(agent: str, chat: ChatMessages) -> str:
    """What the crew double's `agent` says next. Stateless: where an agent is in its work is
    read from the conversation CrewAI shows it (its earlier `Action:` lines), so it does not
    depend on CrewAI keeping one model object per agent."""
    from tests.agents.scripted_crew_llm import final, tool_call

    question = crew_question(agent, chat)
    payload = question[len(TOOL_XSS) :] if question.startswith(TOOL_XSS) else None
    seen = "\n".join(m["content"] for m in chat if m["role"] != "system")
    if agent == "planner":
        return "SPECIALISTS: analyst, researcher" if payload is not None else "SPECIALISTS: analyst"
    if agent == "analyst":
        source = data_file_for(question, chat)
        title = {"title": payload} if payload is not None else {}
        if source is None:
            return final("There is no CSV or JSON file to analyse.")
        if "Action: make_chart" not in seen:
            return tool_call("make_chart", "I should chart the data.", file=source, **title)
        if "Action: make_table" not in seen:
            return tool_call("make_table", "I should tabulate the data.", file=source, **title)
        return final("The chart and the table of the data are made.")
    if agent == "researcher":
        if payload is not None and "Action: write_summary" not in seen:
            return tool_call(
                "write_summary", "I should write it down.", title=payload, markdown=payload
            )
        return final(payload if payload is not None else "Nothing to look up.")
    # The writer (and any agent this double does not know).
    if payload is not None:
        return final(payload)
    if SLOW in question:
        return final(" ".join(f"slowword{i}" for i in range(100)))
    return final(f"Scripted crew answer to: {question} The analyst's chart and table are attached.")


def make_crew_llm() -> type[Any]:
    """The crew double's class: tests/agents' ScriptedCrewLLM (a real CrewAI BaseLLM through
    agents.crew.ProviderLLM) with replies computed from what each agent is shown, paced so a
    browser sees steps and a streamed answer. Built here, after django.setup(), because
    importing it imports CrewAI and the models."""
    from tests.agents.scripted_crew_llm import ScriptedCrewLLM

    def _generate(self: Any, chat: ChatMessages, completion: Completion) -> Iterator[str]:
        question = crew_question(self.agent_name, chat)
        slow = SLOW in question
        time.sleep(CREW_SLOW_CALL_SECONDS if slow else CREW_CALL_SECONDS)
        reply = crew_reply(self.agent_name, chat)
        completion.usage.prompt_tokens = sum(len(m["content"].split()) + 4 for m in chat)
        # Only the writer's answer streams to the thread; the others need no pacing.
        pause = 0.0
        if self.streams_answer:
            pause = CREW_SLOW_WORD_SECONDS if slow else CREW_WORD_SECONDS
        return _paced_words(reply, pause, completion)

    return type(
        "E2ECrewLLM",
        (ScriptedCrewLLM,),
        {"__doc__": "TEST DOUBLE: the e2e server's crew model.", "_generate": _generate},
    )


def _paced_words(reply: str, pause: float, completion: Completion) -> Iterator[str]:
    for index, word in enumerate(reply.split(" ")):
        if index and pause:
            time.sleep(pause)
        completion.usage.completion_tokens += 1
        yield word if index == 0 else " " + word


def install_doubles() -> None:
    """Replace the model, for this process only, before asgi.py starts the embedded worker."""
    import agents.crew
    import agents.llm

    provider = E2EScriptedProvider()
    agents.llm.get_provider = lambda model: provider
    agents.crew.ProviderLLM = make_crew_llm()  # type: ignore[misc]


# --- seeding -----------------------------------------------------------------------------------


def seed(var_dir: Path) -> dict[str, Any]:
    """The cast, the test models, grants and money; fresh API tokens. Safe to run again on the
    same VAR_DIR (a restarted server keeps its data)."""
    from agents.models import AgentMode, AIModel, ModelGrant
    from agents.services import credit_add
    from threads.models import User
    from threads.services import token_issue, user_create

    users: dict[str, dict[str, str]] = {}
    for name in USERS:
        user = User.objects.filter(username=name).first()
        created = user is None
        if user is None:
            # As bootstrap_demo does, minus the superuser bit: the normal chat permissions.
            user = user_create(username=name, password=password_for(name))
        if created and name in FUNDED:
            credit_add(user=user, amount=CREDIT, note="e2e seed")
        _, token = token_issue(user=user, name="e2e")
        users[name] = {
            "username": name,
            "password": password_for(name),
            "token": token,
            "id": str(user.pk),
        }
    test_models = {
        CREW_MODEL: {
            "id": "mdl_e2e_crew",
            "agent_mode": AgentMode.CREW,
            "supports_tools": True,
            "context_window": 8192,
            "max_output_tokens": 512,
            "price_input_per_1k": Decimal("0.05"),
            "price_output_per_1k": Decimal("0.15"),
        },
        PRICED_MODEL: {
            "id": "mdl_e2e_priced",
            "agent_mode": AgentMode.CORE,
            "context_window": 4096,
            "max_output_tokens": 512,
            "price_input_per_1k": Decimal("1.00"),
            "price_output_per_1k": Decimal("2.00"),
        },
    }
    models: dict[str, str] = {}
    for name, fields in test_models.items():
        model_id = fields.pop("id")
        model, _ = AIModel.objects.update_or_create(
            pk=model_id, defaults={"name": name, "provider": "local", **fields}
        )
        for username in FUNDED:
            ModelGrant.objects.get_or_create(model=model, user=User.objects.get(username=username))
        models[name] = model.pk
    default = AIModel.objects.filter(is_default=True).first()
    if default is not None:
        models["default"] = default.pk
    data = {"users": users, "models": models}
    (var_dir / SEED_FILE).write_text(json.dumps(data, indent=2))
    return data


# --- running -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--var-dir", default=os.environ.get("VAR_DIR", ""))
    args = parser.parse_args(argv)
    if not args.var_dir:
        parser.error("give --var-dir or VAR_DIR: the server's database and files go there")
    var_dir = Path(args.var_dir).resolve()
    var_dir.mkdir(parents=True, exist_ok=True)

    for name in NOT_EMBEDDED:
        os.environ.pop(name, None)
    os.environ.update(TELEMETRY_OFF)
    os.environ["VAR_DIR"] = str(var_dir)
    os.environ["DJANGO_SETTINGS_MODULE"] = "chatproject.settings"

    import django
    from django.core.management import call_command

    django.setup()
    started = time.monotonic()
    call_command("migrate", interactive=False, verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)
    seed(var_dir)
    install_doubles()
    print(f"e2e server: set up in {time.monotonic() - started:.1f}s", file=sys.stderr, flush=True)

    from daphne.cli import CommandLineInterface

    CommandLineInterface().run(
        ["-b", args.host, "-p", str(args.port), "chatproject.asgi:application"]
    )


if __name__ == "__main__":
    main()
