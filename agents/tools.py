"""The crew's tools: CrewAI tools over the platform's data, each acting as the asking user.

Every tool reaches data only through the same selectors the REST API uses, with the user who
asked: a crew can never read a thread, message or file its user could not open in the UI, however
a prompt (or an attachment pretending to be instructions) words it. Tools do not write rows
themselves: artifacts go through `ToolContext.save_artifact`, which agents.services provides.

A tool never raises into the crew for a user-level problem (no such file, no access, bad column):
it answers with a sentence the model can act on. Stop and the run's tool budget end the crew.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from crewai.tools import BaseTool
from django.conf import settings
from django.db import close_old_connections, connection
from pydantic import BaseModel, Field

from agents.context import file_text
from messaging import selectors as messaging_selectors
from messaging.models import File
from threads.errors import ApplicationError, Invalid, NotFound
from threads.ids import is_valid_client_id
from threads.models import Thread, User

logger = logging.getLogger(__name__)

MAX_TABLE_BYTES = 5 * 1024 * 1024
MAX_TABLE_ROWS = 50_000
MAX_CHART_BARS = 30
TOOL_TEXT_LIMIT = 4000  # characters of one tool answer the model reads


class CrewStopped(Exception):
    """The user pressed stop, or the run ran out of time, steps or money."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ToolContext:
    """What every tool of one run shares: who asks, where, and the run's callbacks."""

    user: User
    thread: Thread
    question_file_ids: list[str]
    gateway_token: str | None
    save_artifact: Callable[..., dict[str, Any]]
    step: Callable[..., None]
    should_stop: Callable[[], str | None]
    max_tool_calls: int
    owner_thread: int = field(default_factory=threading.get_ident)
    tool_calls: int = 0
    usage: dict[str, dict[str, float]] = field(default_factory=dict)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def cite(self, key: str, source: dict[str, Any]) -> None:
        with self.lock:
            self.sources.setdefault(key, source)


@contextmanager
def _tool_call(ctx: ToolContext, agent: str, name: str, detail: str) -> Iterator[None]:
    """Count, time and announce one tool call; close the database connection afterwards when
    CrewAI ran the tool on one of its own threads (concurrent tasks), so none is left open."""
    reason = ctx.should_stop()
    if reason:
        raise CrewStopped(reason)
    with ctx.lock:
        if ctx.tool_calls >= ctx.max_tool_calls:
            raise CrewStopped("The crew used all the tool calls one reply may make.")
        ctx.tool_calls += 1
    ctx.step(agent=agent, step="tool", tool=name, detail=detail[:200])
    started = time.monotonic()
    own_thread = threading.get_ident() == ctx.owner_thread
    try:
        yield
    finally:
        elapsed_ms = (time.monotonic() - started) * 1000
        with ctx.lock:
            entry = ctx.usage.setdefault(name, {"calls": 0, "ms": 0.0})
            entry["calls"] += 1
            entry["ms"] = round(entry["ms"] + elapsed_ms, 1)
        if not own_thread:
            connection.close()
        else:
            close_old_connections()


def _clip(text: str, limit: int = TOOL_TEXT_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit] + "\n[… cut]"


class _ThreadlineTool(BaseTool):
    """A CrewAI tool bound to one run's context and one agent's name."""

    ctx: Any = Field(default=None, exclude=True)
    agent_name: str = "agent"

    def _guarded(self, detail: str, work: Callable[[], str]) -> str:
        context: ToolContext = self.ctx
        with _tool_call(context, self.agent_name, self.name, detail):
            try:
                return _clip(work())
            except CrewStopped:
                raise
            except ApplicationError as exc:
                return f"Error: {exc.message}"
            except Exception:
                logger.exception("tool %s failed", self.name)
                return "Error: the tool failed; try something else."


# --- reading ---------------------------------------------------------------------------------


class SearchInput(BaseModel):
    query: str = Field(description="Words to look for in the user's messages and threads.")


class SearchMessagesTool(_ThreadlineTool):
    name: str = "search_messages"
    description: str = (
        "Full-text search over the messages and threads the user can see. Returns message ids, "
        "thread ids and short excerpts."
    )
    args_schema: type[BaseModel] = SearchInput

    def _run(self, query: str) -> str:
        return self._guarded(query, lambda: _search(self.ctx, query))


def _search(ctx: ToolContext, query: str) -> str:
    hits = messaging_selectors.message_search(user=ctx.user, query=query, limit=8)
    threads = messaging_selectors.thread_search(user=ctx.user, query=query, limit=5)
    if not hits and not threads:
        return f"Nothing found for {query!r}."
    lines = []
    for hit in hits:
        ctx.cite(
            hit.id, {"kind": "message", "id": hit.id, "threadId": hit.thread_id, "seq": hit.seq}
        )
        lines.append(f"- message {hit.id} in thread {hit.thread_id}: {hit.snippet}")
    for thread in threads:
        lines.append(f"- thread {thread.id}: {thread.title}")
    return "\n".join(lines)


class FileInput(BaseModel):
    file: str = Field(description="The file's id (file_…) or its name as attached.")


def _resolve_file(ctx: ToolContext, reference: str) -> File:
    """A file the user may read, by id or by the name it was attached under in this thread."""
    reference = reference.strip().strip("\"'")
    if reference.startswith("file_") and is_valid_client_id(reference):
        return messaging_selectors.access_file(user=ctx.user, file_id=reference)
    candidates = File.objects.filter(messages__thread=ctx.thread, name=reference).order_by(
        "-created_at"
    )
    for file in candidates.distinct()[:5]:
        # Attached in this thread is not enough on its own: the same rule as the API decides.
        try:
            return messaging_selectors.access_file(user=ctx.user, file_id=file.pk)
        except ApplicationError:
            continue
    raise NotFound(f"No file {reference!r} that you can read here.")


class ReadFileTool(_ThreadlineTool):
    name: str = "read_file"
    description: str = "Read the text of an attached file (txt, md, csv, json, pdf)."
    args_schema: type[BaseModel] = FileInput

    def _run(self, file: str) -> str:
        return self._guarded(file, lambda: _read(self.ctx, file))


def _read(ctx: ToolContext, reference: str) -> str:
    found = _resolve_file(ctx, reference)
    text = file_text(found)
    if text is None:
        return f"{found.name} has no readable text."
    ctx.cite(found.pk, {"kind": "file", "id": found.pk, "name": found.name})
    return f"[{found.name}]\n{text}"


# --- tables ----------------------------------------------------------------------------------

Table = tuple[list[str], list[dict[str, Any]]]


def _table_from_bytes(raw: bytes, *, name: str, content_type: str) -> Table:
    text = raw.decode("utf-8-sig", "replace")
    if content_type == "application/json" or name.lower().endswith(".json"):
        return _table_from_json(json.loads(text))
    reader = csv.DictReader(io.StringIO(text))
    rows = [dict(row) for _, row in zip(range(MAX_TABLE_ROWS), reader, strict=False)]
    return list(reader.fieldnames or []), rows


def _table_from_json(data: Any) -> Table:
    if isinstance(data, dict):
        # {"items": [...]} and similar envelopes: take the first list of objects inside.
        lists = [value for value in data.values() if isinstance(value, list)]
        data = lists[0] if lists else [data]
    if not isinstance(data, list):
        raise Invalid("The JSON is not a list of records.")
    rows = [row for row in data[:MAX_TABLE_ROWS] if isinstance(row, dict)]
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    return columns, rows


def load_table(ctx: ToolContext, source: str) -> tuple[str, Table]:
    """(a display name, the table) from an attachment or from `gateway:<resource>`."""
    if source.startswith("gateway:"):
        from agents.gateway import gateway_fetch

        resource = source.split(":", 1)[1]
        result = gateway_fetch(
            resource=resource,
            organization_id=ctx.user.organization_id,
            token=ctx.gateway_token,
        )
        ctx.cite(source, {"kind": "gateway", "resource": resource})
        return resource, _table_from_json(result.data)
    found = _resolve_file(ctx, source)
    if found.size > MAX_TABLE_BYTES:
        raise Invalid(f"{found.name} is too big to analyse here.")
    with found.content.open("rb") as handle:
        raw = handle.read(MAX_TABLE_BYTES)
    ctx.cite(found.pk, {"kind": "file", "id": found.pk, "name": found.name})
    try:
        return found.name, _table_from_bytes(raw, name=found.name, content_type=found.content_type)
    except (ValueError, csv.Error) as exc:
        raise Invalid(f"{found.name} is not a table: {exc}") from exc


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return Decimal(str(value).replace(",", "").strip())
    except (InvalidOperation, ValueError):
        return None


def _column(columns: list[str], name: str | None) -> str | None:
    """A column by name, forgiving case and surrounding spaces (models are sloppy)."""
    if not name:
        return None
    wanted = name.strip().strip("\"'").lower()
    for column in columns:
        if column.strip().lower() == wanted:
            return column
    raise Invalid(f"No column {name!r}; the columns are {', '.join(columns)}.")


def aggregate(
    rows: list[dict[str, Any]], *, by: str, value: str | None, how: str
) -> list[tuple[str, Decimal]]:
    """Group rows by one column: the count of rows, or the sum / mean of a numeric column."""
    totals: dict[str, Decimal] = {}
    counts: dict[str, int] = {}
    for row in rows:
        key = str(row.get(by, "")).strip() or "(empty)"
        counts[key] = counts.get(key, 0) + 1
        if how == "count" or value is None:
            continue
        number = _number(row.get(value))
        if number is not None:
            totals[key] = totals.get(key, Decimal(0)) + number
    if how == "count" or value is None:
        return [(key, Decimal(count)) for key, count in counts.items()]
    if how == "mean":
        return [(key, totals.get(key, Decimal(0)) / counts[key]) for key in counts]
    return [(key, totals.get(key, Decimal(0))) for key in counts]


def _fmt(number: Decimal) -> str:
    normal = number.quantize(Decimal("0.01")) if number != number.to_integral() else number
    return f"{normal:f}"


class TableInput(BaseModel):
    file: str = Field(description="File id or name of a CSV/JSON attachment, or gateway:<name>.")
    group_by: str | None = Field(default=None, description="Column to group rows by.")
    value: str | None = Field(default=None, description="Numeric column to add up.")
    how: str = Field(default="sum", description="sum, mean or count.")


class AnalyseTableTool(_ThreadlineTool):
    name: str = "analyse_table"
    description: str = (
        "Describe a CSV or JSON table: its columns, row count and numeric totals; with group_by "
        "(and value), totals per group."
    )
    args_schema: type[BaseModel] = TableInput

    def _run(
        self, file: str, group_by: str | None = None, value: str | None = None, how: str = "sum"
    ) -> str:
        return self._guarded(file, lambda: _analyse(self.ctx, file, group_by, value, how))


def _analyse(ctx: ToolContext, source: str, by: str | None, value: str | None, how: str) -> str:
    name, (columns, rows) = load_table(ctx, source)
    lines = [f"{name}: {len(rows)} rows; columns: {', '.join(columns)}"]
    for column in columns:
        numbers = [n for row in rows if (n := _number(row.get(column))) is not None]
        if numbers and len(numbers) == len(rows):
            lines.append(f"- {column}: sum {_fmt(sum(numbers, Decimal(0)))}")
    by_column = _column(columns, by)
    if by_column:
        value_column = _column(columns, value)
        how = how if how in {"sum", "mean", "count"} else "sum"
        label = f"{how} of {value_column}" if value_column and how != "count" else "count"
        lines.append(f"{label} by {by_column}:")
        for key, total in aggregate(rows, by=by_column, value=value_column, how=how)[:50]:
            lines.append(f"- {key}: {_fmt(total)}")
    return "\n".join(lines)


# --- making things ---------------------------------------------------------------------------


def _groups_for(ctx: ToolContext, source: str, by: str | None, value: str | None, how: str) -> Any:
    name, (columns, rows) = load_table(ctx, source)
    if not columns:
        raise Invalid(f"{name} has no columns.")
    by_column = _column(columns, by) or columns[0]
    value_column = _column(columns, value)
    if value_column is None and how != "count":
        numeric = [
            column
            for column in columns
            if column != by_column and all(_number(row.get(column)) is not None for row in rows)
        ]
        value_column = numeric[0] if numeric else None
    how = how if how in {"sum", "mean", "count"} else "sum"
    if value_column is None:
        how = "count"
    groups = aggregate(rows, by=by_column, value=value_column, how=how)
    return name, by_column, value_column, how, groups


class ChartInput(TableInput):
    title: str = Field(default="", description="The chart's title.")
    kind: str = Field(default="bar", description="bar, line or pie.")


class MakeChartTool(_ThreadlineTool):
    name: str = "make_chart"
    description: str = (
        "Draw a chart (PNG) of a CSV/JSON table: value per group_by. Saves it as an artifact "
        "shown with the reply."
    )
    args_schema: type[BaseModel] = ChartInput

    def _run(
        self,
        file: str,
        group_by: str | None = None,
        value: str | None = None,
        how: str = "sum",
        title: str = "",
        kind: str = "bar",
    ) -> str:
        return self._guarded(
            file, lambda: _chart(self, file, group_by, value, how, title or "", kind)
        )


def _chart(
    tool: _ThreadlineTool,
    source: str,
    by: str | None,
    value: str | None,
    how: str,
    title: str,
    kind: str,
) -> str:
    ctx: ToolContext = tool.ctx
    name, by_column, value_column, how, groups = _groups_for(ctx, source, by, value, how)
    groups = groups[:MAX_CHART_BARS]
    label = f"{how} of {value_column}" if how != "count" else "count"
    title = (title or f"{label} by {by_column}").strip()[:200]
    png = render_chart(
        labels=[key for key, _ in groups],
        values=[float(total) for _, total in groups],
        title=title,
        kind=kind,
        value_label=label,
    )
    artifact = ctx.save_artifact(
        agent=tool.agent_name,
        kind="chart",
        title=title,
        content_type="image/png",
        content=png,
        data={
            "source": name,
            "columns": [by_column, label],
            "rows": [[key, _fmt(total)] for key, total in groups],
        },
    )
    return f"Chart saved as artifact {artifact['id']} ({title!r}, {len(groups)} groups)."


def render_chart(
    *, labels: list[str], values: list[float], title: str, kind: str, value_label: str
) -> bytes:
    """A PNG. matplotlib is imported here: it is slow to import and only the crew draws."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.subplots()
    if kind == "pie" and values and all(v >= 0 for v in values):
        axes.pie(values, labels=labels, autopct="%1.0f%%")
    elif kind == "line":
        axes.plot(labels, values, marker="o")
        axes.set_ylabel(value_label)
    else:
        axes.bar(labels, values, color="#3b6ea8")
        axes.set_ylabel(value_label)
    axes.set_title(title)
    if kind != "pie":
        for tick in axes.get_xticklabels():
            tick.set_rotation(30)
            tick.set_horizontalalignment("right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


class MakeTableTool(_ThreadlineTool):
    name: str = "make_table"
    description: str = (
        "Make a table (CSV, shown as Markdown) of a CSV/JSON table's value per group_by. Saves "
        "it as an artifact shown with the reply."
    )
    args_schema: type[BaseModel] = ChartInput

    def _run(
        self,
        file: str,
        group_by: str | None = None,
        value: str | None = None,
        how: str = "sum",
        title: str = "",
        kind: str = "",
    ) -> str:
        return self._guarded(file, lambda: _table(self, file, group_by, value, how, title or ""))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines.extend("| " + " | ".join(cell(c) for c in row) + " |" for row in rows)
    return "\n".join(lines)


def _table(
    tool: _ThreadlineTool, source: str, by: str | None, value: str | None, how: str, title: str
) -> str:
    ctx: ToolContext = tool.ctx
    name, by_column, value_column, how, groups = _groups_for(ctx, source, by, value, how)
    label = f"{how} of {value_column}" if how != "count" else "count"
    header = [by_column, label]
    rows = [[key, _fmt(total)] for key, total in groups]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    markdown = markdown_table(header, rows)
    title = (title or f"{label} by {by_column}").strip()[:200]
    artifact = ctx.save_artifact(
        agent=tool.agent_name,
        kind="table",
        title=title,
        content_type="text/csv",
        content=buffer.getvalue().encode("utf-8"),
        data={"source": name, "columns": header, "rows": rows[:200], "markdown": markdown},
    )
    return f"Table saved as artifact {artifact['id']} ({title!r}):\n{markdown}"


class SummaryInput(BaseModel):
    title: str = Field(description="The document's title.")
    markdown: str = Field(description="The summary, in Markdown.")


class WriteSummaryTool(_ThreadlineTool):
    name: str = "write_summary"
    description: str = "Save a summary document (Markdown) as an artifact shown with the reply."
    args_schema: type[BaseModel] = SummaryInput

    def _run(self, title: str, markdown: str) -> str:
        return self._guarded(title, lambda: _summary(self, title, markdown))


def _summary(tool: _ThreadlineTool, title: str, markdown: str) -> str:
    ctx: ToolContext = tool.ctx
    title = title.strip()[:200] or "Summary"
    body = markdown.strip()[:100_000]
    if not body:
        return "Error: the summary is empty."
    artifact = ctx.save_artifact(
        agent=tool.agent_name,
        kind="summary",
        title=title,
        content_type="text/markdown",
        content=f"# {title}\n\n{body}\n".encode(),
        data={},
    )
    return f"Summary saved as artifact {artifact['id']} ({title!r})."


# --- the gateway -----------------------------------------------------------------------------


class GatewayInput(BaseModel):
    resource: str = Field(description="interactions, patterns, products or organizations.")


class GatewayFetchTool(_ThreadlineTool):
    name: str = "fetch_gateway"
    description: str = (
        "Fetch the user's organization's interactions, patterns, products or organizations "
        "from the data gateway (JSON). Use gateway:<resource> as a table source afterwards."
    )
    args_schema: type[BaseModel] = GatewayInput

    def _run(self, resource: str) -> str:
        return self._guarded(resource, lambda: _gateway(self.ctx, resource))


def _gateway(ctx: ToolContext, resource: str) -> str:
    from agents.gateway import GatewayError, gateway_fetch

    try:
        result = gateway_fetch(
            resource=resource.strip().strip("\"'").lower(),
            organization_id=ctx.user.organization_id,
            token=ctx.gateway_token,
        )
    except GatewayError as exc:
        return f"Error: {exc}"
    ctx.cite(f"gateway:{resource}", {"kind": "gateway", "resource": resource})
    if result.status >= 400:
        return f"Error: the gateway answered {result.status}."
    body = result.data
    return body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)


# --- who gets what ---------------------------------------------------------------------------


def tools_for(agent: str, ctx: ToolContext) -> list[BaseTool]:
    """The tools of one specialist. The writer has none: it composes from their findings."""
    kinds: dict[str, list[type[_ThreadlineTool]]] = {
        "researcher": [SearchMessagesTool, ReadFileTool, WriteSummaryTool],
        "analyst": [AnalyseTableTool, MakeChartTool, MakeTableTool, ReadFileTool],
    }
    chosen = list(kinds.get(agent, []))
    if settings.GATEWAY_URL and agent in {"researcher", "analyst"}:
        chosen.append(GatewayFetchTool)
    return [tool(ctx=ctx, agent_name=agent) for tool in chosen]  # type: ignore[call-arg]
