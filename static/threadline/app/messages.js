/* The open thread's messages: drawing them (and redrawing a streaming reply), their actions
 * (stop, regenerate, edit, delete), attachments and artifacts, and paging up. */

import { api } from "./api.js";
import { showError } from "./errors.js";
import { renderMarkdown, renderStreaming } from "./markdown.js";
import { myMembership, state, usernameOf } from "./state.js";
import { $, bytesLabel, codePointLength, el, moneyLabel, timeLabel } from "./util.js";

// ---------------------------------------------------------------- paging up

$("messages").addEventListener("scroll", () => {
  if ($("messages").scrollTop < 120) loadOlder();
});

async function loadOlder() {
  const thread = state.current;
  if (!thread || !state.hasOlder || state.loadingOlder || state.oldestSeq === null) return;
  state.loadingOlder = true;
  $("older").hidden = false;
  const box = $("messages");
  const fromBottom = box.scrollHeight - box.scrollTop;
  try {
    const page = await api(
      "GET",
      `threads/${encodeURIComponent(thread.id)}/messages/?${new URLSearchParams({ before: String(state.oldestSeq), limit: "50" })}`,
    );
    if (!state.current || state.current.id !== thread.id) return;
    state.hasOlder = page.hasOlder;
    if (page.messages.length) state.oldestSeq = page.messages[0].seq;
    for (const message of page.messages) upsertMessage(message, { quiet: true });
    renderAllMessages();
    box.scrollTop = box.scrollHeight - fromBottom; // keep what the reader was looking at
  } catch (error) {
    showError(error);
  } finally {
    state.loadingOlder = false;
    $("older").hidden = true;
  }
}

// ---------------------------------------------------------------- messages

function sortedMessages() {
  return [...state.messages.values()].sort((a, b) => (a.seq ?? Infinity) - (b.seq ?? Infinity));
}

export function upsertMessage(message, { quiet = false } = {}) {
  const known = state.messages.get(message.id);
  // A late copy (an older snapshot fetched over REST) must not shorten streamed text.
  if (known && known.status === "streaming" && message.status === "streaming") {
    if (codePointLength(message.text) < codePointLength(known.text)) message.text = known.text;
  }
  state.messages.set(message.id, Object.assign(known || {}, message));
  if (!quiet) renderMessage(state.messages.get(message.id));
}

export function renderAllMessages() {
  $("message-list").replaceChildren(...sortedMessages().map(buildMessage));
}

export function renderMessage(message) {
  dirty.delete(message.id); // drawn in full now: nothing left for the next frame
  const existing = document.querySelector(`[data-message-id="${CSS.escape(message.id)}"]`);
  const stick = isNearBottom();
  const node = buildMessage(message);
  if (existing) {
    existing.replaceWith(node);
  } else {
    // Insert in seq order (a message may arrive after a newer one).
    const list = $("message-list");
    const after = [...list.children].find((child) => {
      const other = state.messages.get(child.dataset.messageId);
      return other && (other.seq ?? Infinity) > (message.seq ?? Infinity);
    });
    list.insertBefore(node, after || null);
  }
  if (stick) scrollToBottom();
}

function isNearBottom() {
  const box = $("messages");
  return box.scrollHeight - box.scrollTop - box.clientHeight < 80;
}

export function scrollToBottom() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

const STATUS_LABELS = {
  queued: "waiting…",
  streaming: "writing…",
  failed: "failed",
  cancelled: "stopped",
  sending: "sending…",
};

function buildMessage(message) {
  const mine = message.userId && message.userId === state.me.id;
  const isAi = !message.userId;
  const body = el("div", { class: "body markdown", dataset: { testid: "message-body" } });
  renderMarkdown(body, message.text);
  const usage = message.meta && message.meta.usage;
  const head = el(
    "div",
    { class: "msg-head small" },
    el("span", { class: "author", text: isAi ? modelName(message) : usernameOf(message.userId) }),
    el("time", { class: "muted", datetime: message.createdAt || "", text: timeLabel(message.createdAt) }),
    message.edited ? el("span", { class: "muted", text: "(edited)" }) : null,
    STATUS_LABELS[message.status]
      ? el("span", { class: `status status-${message.status}`, dataset: { testid: "message-status" }, text: STATUS_LABELS[message.status] })
      : null,
    isAi && usage && usage.cost !== undefined && message.status !== "streaming"
      ? el("span", { class: "cost muted", dataset: { testid: "reply-cost" }, title: `${usage.promptTokens || 0} in / ${usage.completionTokens || 0} out tokens`, text: moneyLabel(usage.cost) })
      : null,
  );
  const node = el(
    "li",
    {
      class: `msg ${isAi ? "ai" : ""} ${mine ? "mine" : ""}`,
      dataset: { messageId: message.id, status: message.status || "", testid: "message" },
    },
    head,
    body,
  );
  if (message.status === "failed" && message.meta && message.meta.error) {
    node.append(el("p", { class: "error small", text: String(message.meta.error.message || message.meta.error) }));
  }
  const step = state.steps.get(message.id);
  if (step && (message.status === "streaming" || message.status === "queued")) {
    node.append(el("p", { class: "step muted small", dataset: { testid: "agent-step" }, text: stepLabel(step) }));
  }
  if (message.fileIds && message.fileIds.length) node.append(buildAttachments(message.fileIds));
  const artifacts = state.artifacts.get(message.id);
  if (artifacts && artifacts.length) node.append(el("div", { class: "artifacts" }, ...artifacts.map(buildArtifact)));
  node.append(buildActions(message, { mine, isAi }));
  return node;
}

function modelName(message) {
  const id = message.meta && message.meta.modelId;
  const model = state.models.find((m) => m.id === id);
  return model ? model.name : "AI";
}

function stepLabel(step) {
  if (step.step === "waiting") return `Waiting for a free crew (${step.detail || "busy"})…`;
  if (step.step === "tool") return `${step.agent}: using ${step.tool}…`;
  if (step.step === "finished") return `${step.agent} finished`;
  return `${step.agent} is working…`;
}

function buildActions(message, { mine, isAi }) {
  const actions = el("div", { class: "actions small" });
  const active = message.status === "queued" || message.status === "streaming";
  if (isAi && active) {
    actions.append(el("button", { type: "button", class: "link", dataset: { testid: "stop" }, onclick: () => stopReply(message) }, "Stop"));
  }
  if (isAi && !active && message.status !== "sending") {
    actions.append(el("button", { type: "button", class: "link", dataset: { testid: "regenerate" }, onclick: () => regenerate(message) }, "Regenerate"));
  }
  if (mine && message.status !== "sending") {
    actions.append(el("button", { type: "button", class: "link", dataset: { testid: "edit" }, onclick: (e) => startEdit(message, e.target) }, "Edit"));
  }
  const owner = state.current && (myMembership(state.current) || {}).role === "owner";
  if ((mine || owner || state.me.isAdmin) && message.status !== "sending") {
    actions.append(el("button", { type: "button", class: "link danger", dataset: { testid: "delete" }, onclick: () => deleteMessage(message) }, "Delete"));
  }
  return actions;
}

async function stopReply(message) {
  try {
    upsertMessage(await api("POST", `messages/${encodeURIComponent(message.id)}/stop/`));
  } catch (error) {
    showError(error);
  }
}

async function regenerate(message) {
  try {
    upsertMessage(await api("POST", `messages/${encodeURIComponent(message.id)}/regenerate/`));
    scrollToBottom();
  } catch (error) {
    showError(error);
  }
}

function startEdit(message, button) {
  const node = button.closest(".msg");
  const area = el("textarea", { class: "edit-box", rows: "3", "aria-label": "Edit message", dataset: { testid: "edit-box" } });
  area.value = message.text;
  const save = async () => {
    try {
      upsertMessage(await api("PATCH", `messages/${encodeURIComponent(message.id)}/`, { text: area.value }));
    } catch (error) {
      showError(error);
    }
  };
  const form = el(
    "div",
    { class: "edit" },
    area,
    el("div", { class: "actions small" },
      el("button", { type: "button", class: "primary", dataset: { testid: "save-edit" }, onclick: save }, "Save"),
      el("button", { type: "button", onclick: () => renderMessage(message) }, "Cancel")),
  );
  area.addEventListener("keydown", (event) => {
    if (event.key === "Escape") renderMessage(message);
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) save();
  });
  node.querySelector(".body").replaceWith(form);
  area.focus();
}

async function deleteMessage(message) {
  if (!confirm("Delete this message?")) return;
  try {
    await api("DELETE", `messages/${encodeURIComponent(message.id)}/`);
    removeMessage(message.id);
  } catch (error) {
    showError(error);
  }
}

export function removeMessage(messageId) {
  state.messages.delete(messageId);
  const node = document.querySelector(`[data-message-id="${CSS.escape(messageId)}"]`);
  if (node) node.remove();
}

// ---------------------------------------------------------------- a streaming reply, redrawn

// Deltas can arrive faster than the screen refreshes: draw each message at most once a frame,
// and leave at least four times the last draw's cost before the next, so that redrawing takes
// at most a fifth of the main thread however long a reply grows. A draw parses only the
// reply's last, growing block (renderStreaming); the reply's final draw, when its status
// changes, is a whole renderMessage.
const dirty = new Set();
let drawQueued = false;
let nextDrawAt = 0;

export function scheduleRender(message) {
  dirty.add(message.id);
  if (drawQueued) return;
  drawQueued = true;
  const wait = nextDrawAt - performance.now();
  if (wait > 0) setTimeout(() => requestAnimationFrame(flushRenders), wait);
  else requestAnimationFrame(flushRenders);
}

function flushRenders() {
  drawQueued = false;
  const started = performance.now();
  for (const id of [...dirty]) {
    dirty.delete(id);
    const message = state.messages.get(id);
    if (!message) continue;
    const node = document.querySelector(`[data-message-id="${CSS.escape(id)}"]`);
    const step = state.steps.get(id);
    const stepLine = node && node.querySelector(".step");
    if (node && node.dataset.status === message.status && !step === !stepLine) {
      // Only the text or the step grew: redraw those, not the attachments and artifacts.
      const stick = isNearBottom();
      const body = node.querySelector(".body");
      if (message.status === "streaming") renderStreaming(body, message.text);
      else renderMarkdown(body, message.text);
      if (stepLine) stepLine.textContent = stepLabel(step);
      if (stick) scrollToBottom();
    } else {
      renderMessage(message);
    }
  }
  const finished = performance.now();
  nextDrawAt = finished + 4 * (finished - started);
}

// The stored copy of one message, merged in if it belongs to the open thread.
export async function fetchMessage(messageId) {
  try {
    const message = await api("GET", `messages/${encodeURIComponent(messageId)}/`);
    if (state.current && message.threadId === state.current.id) upsertMessage(message);
    return message;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------- attachments and artifacts

function fileMeta(fileId) {
  if (!state.files.has(fileId)) {
    state.files.set(fileId, api("GET", `files/${encodeURIComponent(fileId)}/`).catch(() => null));
  }
  return state.files.get(fileId);
}

function buildAttachments(fileIds) {
  const list = el("ul", { class: "attachments small", dataset: { testid: "attachments" } });
  for (const fileId of fileIds) {
    const link = el("a", { href: `/api/v1/files/${encodeURIComponent(fileId)}/content/`, download: "", dataset: { testid: "attachment" } }, "📄 ", el("span", { class: "name", text: "attachment" }));
    const item = el("li", {}, link);
    list.append(item);
    fileMeta(fileId).then((meta) => {
      if (!meta) {
        item.replaceChildren(el("span", { class: "muted", text: "(file not available)" }));
        return;
      }
      link.querySelector(".name").textContent = meta.name;
      link.append(el("span", { class: "muted", text: ` ${bytesLabel(meta.size)}` }));
    });
  }
  return list;
}

export async function loadArtifacts(threadId) {
  try {
    const data = await api("GET", `threads/${encodeURIComponent(threadId)}/artifacts/`);
    if (!state.current || state.current.id !== threadId) return;
    for (const artifact of data.artifacts) addArtifact(artifact, { quiet: true });
    renderAllMessages();
  } catch {
    /* artifacts are extras; the messages are already shown */
  }
}

export function addArtifact(artifact, { quiet = false } = {}) {
  const list = state.artifacts.get(artifact.messageId) || [];
  if (!list.some((a) => a.id === artifact.id)) list.push(artifact);
  state.artifacts.set(artifact.messageId, list);
  const message = state.messages.get(artifact.messageId);
  if (!quiet && message) renderMessage(message);
}

function buildArtifact(artifact) {
  const title = el("span", { class: "artifact-title", text: artifact.title || artifact.kind });
  const download = el("a", { href: artifact.contentUrl, download: "", class: "small", dataset: { testid: "artifact-download" } }, artifact.kind === "table" ? "Download CSV" : "Download");
  const box = el(
    "figure",
    { class: `artifact artifact-${artifact.kind}`, dataset: { testid: "artifact", kind: artifact.kind, artifactId: artifact.id } },
    el("figcaption", {}, title, " ", download),
  );
  const data = artifact.data || {};
  if (artifact.kind === "chart" && artifact.contentType === "image/png") {
    box.append(el("img", { src: artifact.contentUrl, alt: artifact.title || "chart", loading: "lazy" }));
  } else if (artifact.kind === "table" && Array.isArray(data.rows)) {
    box.append(buildTable(data.columns || [], data.rows));
  } else if (artifact.kind === "summary") {
    const body = el("div", { class: "markdown" }, "Loading…");
    box.append(body);
    summaryText(artifact)
      .then((text) => renderMarkdown(body, text))
      .catch(() => { body.textContent = "(could not load the summary)"; });
  }
  return box;
}

// A message is redrawn as its reply streams; its summaries are fetched once.
const summaries = new Map();
function summaryText(artifact) {
  if (!summaries.has(artifact.id)) {
    const text = fetch(artifact.contentUrl, { credentials: "same-origin" }).then((r) =>
      r.ok ? r.text() : Promise.reject(new Error(r.statusText)),
    );
    text.catch(() => summaries.delete(artifact.id));
    summaries.set(artifact.id, text);
  }
  return summaries.get(artifact.id);
}

function buildTable(columns, rows) {
  return el(
    "div",
    { class: "table-wrap" },
    el(
      "table",
      {},
      el("thead", {}, el("tr", {}, ...columns.map((c) => el("th", { text: String(c) })))),
      el("tbody", {}, ...rows.map((row) => el("tr", {}, ...(Array.isArray(row) ? row : Object.values(row)).map((cell) => el("td", { text: String(cell) }))))),
    ),
  );
}

