/* The composer: sending a message (shown at once, replaced by the server's copy) and attaching
 * files (picker or drop, with progress, checked against the size limit first). */

import { api, config, csrfToken } from "./api.js";
import { composerError } from "./errors.js";
import { fetchMessage, removeMessage, scrollToBottom, upsertMessage } from "./messages.js";
import { state } from "./state.js";
import { markRead } from "./threads.js";
import { $, clientId, el, safeJson } from "./util.js";

const composerText = $("composer-text");
composerText.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const thread = state.current;
  const text = composerText.value;
  if (!thread) return;
  if (state.pending.some((p) => !p.id && !p.error)) {
    composerError("Wait for the files to finish uploading.");
    return;
  }
  const fileIds = state.pending.filter((p) => p.id).map((p) => p.id);
  if (!text.trim() && !fileIds.length) return;
  if (text.length > config.maxMessageChars) {
    composerError(`Messages are limited to ${config.maxMessageChars} characters.`);
    return;
  }
  const body = { id: clientId("msg_"), text, fileIds, reply: $("ask-ai").checked && state.models.length > 0 };
  if (body.reply && $("model").value) body.modelId = $("model").value;
  // Shown at once; the server's copy (same id) replaces it.
  upsertMessage({ id: body.id, threadId: thread.id, seq: null, userId: state.me.id, text, fileIds, meta: {}, status: "sending", createdAt: new Date().toISOString() });
  scrollToBottom();
  composerText.value = "";
  clearPending();
  composerError("");
  try {
    const { reply, ...message } = await api("POST", `threads/${encodeURIComponent(thread.id)}/messages/`, body);
    upsertMessage(message);
    if (reply && !state.messages.has(reply.messageId)) fetchMessage(reply.messageId);
    markRead(); // what you wrote yourself is not news to you
  } catch (error) {
    removeMessage(body.id);
    composerText.value = text;
    composerError(error.message);
  }
});

// Files: picker and drag-and-drop, with progress, checked against the size limit first.
$("file-input").addEventListener("change", (event) => {
  for (const file of event.target.files) attach(file);
  event.target.value = "";
});

const threadPane = $("thread");
let dragDepth = 0;
threadPane.addEventListener("dragenter", (event) => {
  if (!state.current || !event.dataTransfer.types.includes("Files")) return;
  dragDepth++;
  $("drop-hint").hidden = false;
});
threadPane.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) $("drop-hint").hidden = true;
});
threadPane.addEventListener("dragover", (event) => {
  if (state.current) event.preventDefault();
});
threadPane.addEventListener("drop", (event) => {
  event.preventDefault();
  dragDepth = 0;
  $("drop-hint").hidden = true;
  if (!state.current) return;
  for (const file of event.dataTransfer.files) attach(file);
});

function attach(file) {
  const entry = { key: clientId("up"), file, progress: 0, id: null, error: null };
  state.pending.push(entry);
  if (file.size > config.maxFileBytes) {
    entry.error = `Too large: files are limited to ${config.maxFileMb} MB.`;
    renderPending();
    return;
  }
  renderPending();
  const form = new FormData();
  form.append("file", file, file.name);
  const request = new XMLHttpRequest();
  request.open("POST", "/api/v1/files/");
  request.setRequestHeader("X-CSRFToken", csrfToken());
  request.setRequestHeader("Accept", "application/json");
  request.upload.addEventListener("progress", (event) => {
    if (event.lengthComputable) {
      entry.progress = event.loaded / event.total;
      renderPending();
    }
  });
  request.addEventListener("load", () => {
    const data = safeJson(request.responseText);
    if (request.status >= 200 && request.status < 300 && data) {
      entry.id = data.id;
      entry.progress = 1;
      state.files.set(data.id, Promise.resolve(data));
    } else {
      entry.error = (data && data.error && data.error.message) || `Upload failed (${request.status}).`;
    }
    renderPending();
  });
  request.addEventListener("error", () => {
    entry.error = "Upload failed: the connection dropped.";
    renderPending();
  });
  entry.request = request;
  request.send(form);
}

function renderPending() {
  $("pending-files").replaceChildren(
    ...state.pending.map((entry) =>
      el(
        "li",
        { class: entry.error ? "pending error" : "pending", dataset: { testid: "pending-file" } },
        el("span", { class: "name", text: entry.file.name }),
        " ",
        entry.error
          ? el("span", { class: "small", text: entry.error })
          : el("progress", { max: "1", value: String(entry.progress), "aria-label": `Uploading ${entry.file.name}` }),
        entry.id ? el("span", { class: "small muted", text: " ready" }) : null,
        el("button", {
          type: "button",
          class: "link small",
          "aria-label": `Remove ${entry.file.name}`,
          onclick: () => {
            if (entry.request && !entry.id && !entry.error) entry.request.abort();
            state.pending = state.pending.filter((p) => p !== entry);
            renderPending();
          },
        }, "✕"),
      ),
    ),
  );
}

function clearPending() {
  state.pending = [];
  renderPending();
}

