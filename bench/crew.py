"""The crew's own cost: what a CrewAI crew adds around its model calls, and what running the
specialists concurrently saves.

Part A, overhead. The scripted crew model (tests/agents/scripted_crew_llm.py, a test double)
answers instantly: the planner picks the researcher, the researcher makes one tool call
(search_messages, a real full-text query on SQLite) and answers, the writer answers: four model
calls. Timed per run, wall and process CPU (every thread of the process), two ways:
- the full reply path a user pays for, `agents.services.run_execute` on a throwaway SQLite
  database (claim the run, build the context, run the crew, record steps and events, finish the
  message, usage and ledger); the Celery hop is not included (the run is executed in-process);
- `agents.crew.run` alone with hooks that do nothing (CrewAI plus our crew code).
Baseline in the same run: one direct call of the same scripted model (`ProviderLLM.call` with one
message). Overhead = crew minus baseline.

Part B, concurrency. The planner picks both specialists (researcher and analyst); each answers
in one model call that waits DELAY seconds (a slow model); the planner and the writer answer
instantly. Planned concurrently (what `crew.run` does: async CrewAI tasks) against the very
same crew with `async_execution` forced off on every task (agents.crew's `Task` patched), so
the same tasks run one after another. A second pair has every call slow (planner and writer
too), the saving on a whole run.

    python bench/crew.py [--runs 20] [--delay 0.5]
"""

from __future__ import annotations

import os

# CrewAI's telemetry and tracing off before anything imports crewai (settings do it too).
os.environ["CREWAI_DISABLE_TELEMETRY"] = "true"
os.environ["OTEL_SDK_DISABLED"] = "true"
os.environ["CREWAI_TRACING_ENABLED"] = "false"

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_line, pct, setup_django, table, write_section

# CrewAI warns on every Crew built with a plain-function task_callback (checkpointing only).
warnings.filterwarnings("ignore", message="function callbacks cannot be serialized")

QUESTION = "Summarise what the team decided about the launch"
OVERHEAD_GOAL_MS = 300.0
SAVING_GOAL = 40.0


def measure(fn: Callable[[], object], runs: int, warmup: int) -> tuple[list[float], list[float]]:
    """(wall ms, CPU ms) of each of `runs` calls of fn, after `warmup` unmeasured ones."""
    for _ in range(warmup):
        fn()
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(runs):
        cpu_start, start = time.process_time(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - cpu_start) * 1000)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20, help="timed crew runs per path")
    parser.add_argument("--delay", type=float, default=0.5, help="slow model, seconds per call")
    parser.add_argument("--trials", type=int, default=3, help="concurrency trials per plan")
    args = parser.parse_args()

    os.environ["AGENT_MODE"] = "crew"
    os.environ.pop("GATEWAY_URL", None)  # no gateway tool: nothing leaves the machine
    setup_django(None, tempfile.mkdtemp(prefix="threadline-bench-crew-"))
    from django.core.management import call_command
    from django.db import transaction

    call_command("migrate", verbosity=0)

    import agents.crew as crew_module
    from agents import services as agent_services
    from agents.models import AgentRun, AIModel
    from agents.tasks import run_agent
    from agents.tools import ToolContext
    from messaging import services as messaging_services
    from tests.agents.scripted_crew_llm import CrewScript, ScriptedCrewLLM, final, tool_call
    from tests.agents.scripted_llm import ScriptedProvider
    from threads import services as thread_services

    provider = ScriptedProvider()
    user = thread_services.user_create(username="bench")
    model = AIModel.objects.create(
        name="scripted-crew",
        provider="openai",
        provider_model="scripted",
        context_window=8192,
        max_output_tokens=256,
        supports_tools=True,
        agent_mode="crew",
        available_to_all=True,
    )
    notes, _ = messaging_services.thread_create(creator=user, title="Launch notes")
    for text in (
        "We decided to move the launch to the second week of March.",
        "The launch checklist is in the shared drive; Dana owns it.",
        "Marketing wants the launch announcement ready a week before.",
    ):
        messaging_services.message_post(thread=notes, author=user, text=text)

    def overhead_script() -> CrewScript:
        return CrewScript(
            replies={
                "planner": ["SPECIALISTS: researcher"],
                "researcher": [
                    tool_call("search_messages", query="launch"),
                    final("The launch moved to the second week of March (notes thread)."),
                ],
                "writer": [final("The team moved the launch to the second week of March.")],
            }
        )

    def noop(*_args: Any, **_kwargs: Any) -> None:
        return None

    quiet_hooks = crew_module.CrewHooks(step=noop, text=noop, usage=noop, should_stop=lambda: None)

    def bare_llm_for(agent: str, streams_answer: bool) -> crew_module.ProviderLLM:
        return ScriptedCrewLLM(
            model="scripted",
            agent_name=agent,
            threadline_provider=provider,
            hooks=quiet_hooks,
            output_tokens=256,
            streams_answer=streams_answer,
        )

    def crew_alone(thread: Any) -> crew_module.CrewResult:
        context = ToolContext(
            user=user,
            thread=thread,
            question_file_ids=[],
            gateway_token=None,
            save_artifact=lambda **kwargs: {},
            step=noop,
            should_stop=lambda: None,
            max_tool_calls=16,
        )
        return crew_module.run(
            question=QUESTION,
            conversation=f"user: {QUESTION}",
            file_names=[],
            llm_for=bare_llm_for,
            tool_context=context,
            hooks=quiet_hooks,
            max_steps=6,
            time_limit=300,
        )

    # --- Part A: overhead -----------------------------------------------------------------------
    baseline_llm = bare_llm_for("baseline", False)
    one_message = [{"role": "user", "content": QUESTION}]

    def direct_call() -> None:
        ScriptedCrewLLM.script = CrewScript(replies={"baseline": [final("Done.")]})
        baseline_llm.call(one_message)

    crew_thread, _ = messaging_services.thread_create(creator=user, title="Crew alone")

    def crew_run() -> None:
        ScriptedCrewLLM.script = overhead_script()
        result = crew_alone(crew_thread)
        assert result.plan == ["researcher"], result.plan
        assert "second week of March" in result.answer, result.answer
        assert len(ScriptedCrewLLM.script.calls) == 4, len(ScriptedCrewLLM.script.calls)

    pending: list[str] = []

    def queue_reply() -> None:
        """Untimed set-up of one reply: a fresh thread, the question and its queued run."""
        thread, _ = messaging_services.thread_create(creator=user, title="Ask the crew")
        with transaction.atomic():
            question, _ = messaging_services.message_post(thread=thread, author=user, text=QUESTION)
            run = agent_services.reply_request(
                thread=thread, requester=user, request_message=question, model=model
            )
        pending.append(run.pk)

    def full_path() -> None:
        ScriptedCrewLLM.script = overhead_script()
        run_id = pending.pop(0)
        agent_services.run_execute(run_id=run_id)
        run = AgentRun.objects.select_related("message").get(pk=run_id)
        assert run.status == AgentRun.Status.COMPLETE, run.error
        assert "second week of March" in run.message.text, run.message.text

    patches: list[Any] = [
        mock.patch("agents.llm.get_provider", lambda model: provider),
        mock.patch.object(run_agent, "apply_async", noop),  # executed here, not by Celery
        mock.patch.object(crew_module, "ProviderLLM", ScriptedCrewLLM),
    ]
    for patch in patches:
        patch.start()
    warmup = 3
    for _ in range(args.runs + warmup):
        queue_reply()

    # Interleaved in blocks so drift on the shared machine hits every path alike.
    samples: dict[str, tuple[list[float], list[float]]] = {
        "direct": ([], []),
        "crew": ([], []),
        "full": ([], []),
    }
    paths: dict[str, tuple[Callable[[], None], int]] = {
        "direct": (direct_call, 50),
        "crew": (crew_run, 1),
        "full": (full_path, 1),
    }
    for _, (fn, _per) in paths.items():
        for _ in range(warmup):
            fn()
    block = 5
    for _ in range(max(1, args.runs // block)):
        for name, (fn, per) in paths.items():
            wall, cpu = measure(fn, block * per, 0)
            samples[name][0].extend(wall)
            samples[name][1].extend(cpu)
    print("overhead:", {k: round(pct(v[0], 50), 2) for k, v in samples.items()}, flush=True)
    for patch in patches:
        patch.stop()

    # --- Part B: concurrency --------------------------------------------------------------------
    class SlowModel(ScriptedCrewLLM):
        """The scripted model, DELAY seconds per call for the agents in `slow`."""

        slow: frozenset[str] = frozenset()
        delay: float = 0.0

        def _generate(self, chat: Any, completion: Any) -> Iterator[str]:
            if self.agent_name in type(self).slow:
                time.sleep(type(self).delay)
            return super()._generate(chat, completion)

    def slow_llm_for(agent: str, streams_answer: bool) -> crew_module.ProviderLLM:
        return SlowModel(
            model="scripted",
            agent_name=agent,
            threadline_provider=provider,
            hooks=quiet_hooks,
            output_tokens=256,
            streams_answer=streams_answer,
        )

    real_task = crew_module.Task

    def sequential_task(**kwargs: Any) -> Any:
        return real_task(**{**kwargs, "async_execution": False})

    @contextmanager
    def one_after_another(on: bool) -> Iterator[None]:
        if not on:
            yield
            return
        with mock.patch.object(crew_module, "Task", sequential_task):
            yield

    both_thread, _ = messaging_services.thread_create(creator=user, title="Both specialists")

    def two_specialists(sequential: bool) -> float:
        ScriptedCrewLLM.script = CrewScript(
            replies={
                "planner": ["SPECIALISTS: researcher, analyst"],
                "researcher": [final("The notes say March.")],
                "analyst": [final("No table to analyse; nothing to count.")],
                "writer": [final("The launch is in March.")],
            }
        )
        context = ToolContext(
            user=user,
            thread=both_thread,
            question_file_ids=[],
            gateway_token=None,
            save_artifact=lambda **kwargs: {},
            step=noop,
            should_stop=lambda: None,
            max_tool_calls=16,
        )
        start = time.perf_counter()
        with one_after_another(sequential):
            result = crew_module.run(
                question=QUESTION,
                conversation=f"user: {QUESTION}",
                file_names=[],
                llm_for=slow_llm_for,
                tool_context=context,
                hooks=quiet_hooks,
                max_steps=6,
                time_limit=300,
            )
        elapsed = time.perf_counter() - start
        assert result.plan == ["researcher", "analyst"], result.plan
        assert set(result.task_outputs) == {"researcher", "analyst", "writer"}, result.task_outputs
        return elapsed

    SlowModel.delay = args.delay
    concurrency: dict[str, dict[str, list[float]]] = {}
    for label, slow in (
        ("specialists slow", frozenset({"researcher", "analyst"})),
        ("every call slow", frozenset({"planner", "researcher", "analyst", "writer"})),
    ):
        SlowModel.slow = slow
        trial: dict[str, list[float]] = {"concurrent": [], "sequential": []}
        for _ in range(args.trials):  # alternating
            trial["concurrent"].append(two_specialists(False))
            trial["sequential"].append(two_specialists(True))
        concurrency[label] = trial
        print(label, {k: [round(x, 3) for x in v] for k, v in trial.items()}, flush=True)

    # --- report -------------------------------------------------------------------------------------
    direct_wall, direct_cpu = samples["direct"]
    rows: list[list[object]] = []
    overhead: dict[str, float] = {}
    overhead_cpu: dict[str, float] = {}
    labels = {
        "direct": "one direct model call (baseline)",
        "crew": "`crew.run`, hooks that do nothing",
        "full": "full reply path, `run_execute`",
    }
    for name, (wall, cpu) in samples.items():
        if name != "direct":
            overhead[name] = pct(wall, 50) - pct(direct_wall, 50)
            overhead_cpu[name] = statistics.fmean(cpu) - statistics.fmean(direct_cpu)
        rows.append(
            [
                labels[name],
                len(wall),
                1 if name == "direct" else 4,
                pct(wall, 50),
                pct(wall, 99),
                statistics.fmean(cpu),
                overhead.get(name, "-"),
                overhead_cpu.get(name, "-"),
            ]
        )
    b_rows: list[list[object]] = []
    savings: dict[str, float] = {}
    for label, trial in concurrency.items():
        concurrent, sequential = (
            statistics.median(trial["concurrent"]),
            statistics.median(trial["sequential"]),
        )
        savings[label] = (1 - concurrent / sequential) * 100
        b_rows.append(
            [
                label,
                args.trials,
                sequential,
                concurrent,
                sequential - concurrent,
                f"{savings[label]:.0f}%",
            ]
        )

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    full_ms, crew_ms = overhead["full"], overhead["crew"]
    saving = savings["specialists slow"]
    verdicts = [
        f"- crew overhead per run, full reply path: {full_ms:.0f} ms p50 over the direct call "
        f"({pct(samples['full'][0], 99) - pct(direct_wall, 50):.0f} ms at p99), "
        f"{overhead_cpu['full']:.0f} ms CPU (goal < {OVERHEAD_GOAL_MS:.0f} ms): "
        f"{met(full_ms < OVERHEAD_GOAL_MS)}; `crew.run` alone {crew_ms:.0f} ms p50, "
        f"{overhead_cpu['crew']:.0f} ms CPU: {met(crew_ms < OVERHEAD_GOAL_MS)}.",
        f"- concurrency, two specialists each waiting {args.delay:g} s on the model: "
        f"{saving:.0f}% saved (goal ≥ {SAVING_GOAL:.0f}%): {met(saving >= SAVING_GOAL)}; "
        f"with every call slow, {savings['every call slow']:.0f}% of the whole run.",
    ]
    body = "\n".join(
        [
            "## The crew's overhead and concurrency (`bench/crew.py`)",
            "",
            "Part A: the scripted crew model (a test double) answers instantly; a run plans "
            "(researcher), makes one tool call (`search_messages`, full-text on SQLite), answers "
            "and writes: four model calls. The full reply path is `agents.services.run_execute` "
            "on a throwaway SQLite database (claim, context, crew, steps and events, finish, "
            "usage, ledger; the Celery hop is not included); `crew.run` alone has hooks that do "
            "nothing. Baseline in the same run: one direct `ProviderLLM.call` of the same model "
            "with one message. Paths interleaved in blocks of 5; CPU is the whole process's "
            "(`time.process_time`, every thread). Milliseconds.",
            machine_line(),
            "",
            table(
                [
                    "path",
                    "runs",
                    "model calls",
                    "wall p50",
                    "wall p99",
                    "CPU mean",
                    "overhead p50",
                    "overhead CPU",
                ],
                rows,
            ),
            "",
            f"Part B: the planner picks the researcher and the analyst; each answers in one model "
            f"call that waits {args.delay:g} s. Concurrent is `crew.run` as it is (the two "
            "specialists' CrewAI tasks are `async_execution=True`); sequential is the very same "
            "crew with `async_execution` forced off on every task (agents.crew's `Task` patched "
            "in the benchmark), so the same tasks run one after another. In the first pair only "
            "the specialists are slow (planner and writer answer instantly); in the second every "
            "call is slow. Median of the trials, seconds.",
            "",
            table(
                ["slow calls", "trials", "sequential s", "concurrent s", "saved s", "saving"],
                b_rows,
            ),
            "",
            *verdicts,
        ]
    )
    print(body)
    write_section("crew", body)


if __name__ == "__main__":
    main()
