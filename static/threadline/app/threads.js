/* The thread list (topics, filter, paging), the new-thread dialog, and the open thread: opening
 * it, its header and actions (delete, add member, leave), and read markers. */

import { api } from "./api.js";
import { showError } from "./errors.js";
import { loadArtifacts, renderAllMessages, scrollToBottom, upsertMessage } from "./messages.js";
import { socket } from "./socket.js";
import { isUnread, myMembership, state } from "./state.js";
import { $, clientId, debounce, el, timeLabel } from "./util.js";

// ---------------------------------------------------------------- thread list

export async function loadTopics() {
  const data = await api("GET", "topics/");
  state.topics = data.topics || data;
  const filter = $("topic-filter");
  const keep = filter.value;
  filter.replaceChildren(
    el("option", { value: "", text: "All topics" }),
    ...state.topics.map((t) => el("option", { value: t.id, text: t.name })),
  );
  filter.value = keep;
  $("topic-names").replaceChildren(...state.topics.map((t) => el("option", { value: t.name })));
}

export async function loadThreads({ more = false } = {}) {
  const params = new URLSearchParams({ limit: "50" });
  if (state.topicFilter) params.set("topic", state.topicFilter);
  if (more && state.threadCursor) params.set("cursor", state.threadCursor);
  const data = await api("GET", `threads/?${params}`);
  if (!more) {
    state.threads.clear();
    state.threadOrder = [];
  }
  for (const thread of data.threads) {
    state.threads.set(thread.id, thread);
    state.threadOrder.push(thread.id);
  }
  state.threadCursor = data.nextCursor || null;
  $("more-threads").hidden = !state.threadCursor;
  renderThreadList();
}

export function upsertThread(thread, { toTop = false } = {}) {
  state.threads.set(thread.id, thread);
  if (toTop || !state.threadOrder.includes(thread.id)) {
    state.threadOrder = [thread.id, ...state.threadOrder.filter((id) => id !== thread.id)];
  }
  renderThreadList();
}

export function renderThreadList() {
  const list = $("thread-list");
  const topicNames = new Map(state.topics.map((t) => [t.id, t.name]));
  list.replaceChildren(
    ...state.threadOrder
      .map((id) => state.threads.get(id))
      .filter(Boolean)
      .map((thread) => {
        const unread = isUnread(thread) && (!state.current || state.current.id !== thread.id);
        const button = el(
          "button",
          {
            type: "button",
            class: "thread-item",
            "aria-current": state.current && state.current.id === thread.id ? "true" : null,
            dataset: { threadId: thread.id, testid: "thread-item" },
            onclick: () => openThread(thread.id),
          },
          el("span", { class: "thread-title", text: thread.title || "New chat" }),
          unread ? el("span", { class: "unread-dot", "aria-label": "unread", dataset: { testid: "unread" } }) : null,
          el("span", { class: "thread-when muted small", text: timeLabel(thread.lastActivityAt) }),
          thread.topicIds.length
            ? el(
                "span",
                { class: "chips small" },
                ...thread.topicIds.map((id) => el("span", { class: "chip", text: topicNames.get(id) || id })),
              )
            : null,
        );
        return el("li", {}, button);
      }),
  );
  if (state.threadOrder.length === 0) {
    list.append(el("li", { class: "muted small pad", text: "No threads yet." }));
  }
}

$("topic-filter").addEventListener("change", (event) => {
  state.topicFilter = event.target.value;
  loadThreads().catch(showError);
});
$("more-threads").addEventListener("click", () => loadThreads({ more: true }).catch(showError));

// ---------------------------------------------------------------- new thread

const dialog = $("thread-dialog");
$("new-thread").addEventListener("click", () => {
  $("thread-form").reset();
  $("tf-error").hidden = true;
  dialog.showModal();
  $("tf-title").focus();
});
$("tf-cancel").addEventListener("click", () => dialog.close());

$("thread-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const split = (value) => value.split(",").map((s) => s.trim()).filter(Boolean);
  try {
    const topicIds = [];
    for (const name of split($("tf-topics").value)) {
      const known = state.topics.find(
        (t) => t.name.toLowerCase() === name.toLowerCase() || t.slug === name.toLowerCase(),
      );
      if (known) topicIds.push(known.id);
      else topicIds.push((await api("POST", "topics/", { name })).id);
    }
    const body = {
      id: clientId("thr_"),
      userIds: split($("tf-members").value),
      topicIds,
      sessionPrompt: $("tf-prompt").value,
    };
    const title = $("tf-title").value.trim();
    if (title) body.title = title;
    const thread = await api("POST", "threads/", body);
    dialog.close();
    await loadTopics();
    upsertThread(thread, { toTop: true });
    openThread(thread.id);
  } catch (error) {
    const fields = error.body && error.body.error && error.body.error.fields;
    const detail = fields && fields.userIds ? ` Unknown: ${[].concat(fields.userIds).join(", ")}.` : "";
    $("tf-error").textContent = error.message + detail;
    $("tf-error").hidden = false;
  }
});

// ---------------------------------------------------------------- opening a thread

// Each open takes the next ticket and gives up at its next await once a later open took one:
// a slow first click (or a resync) must not overwrite the thread opened after it.
let openTicket = 0;

export async function openThread(threadId, focusSeq) {
  const ticket = ++openTicket;
  const superseded = () => ticket !== openTicket;
  const thread = await api("GET", `threads/${encodeURIComponent(threadId)}/`);
  if (superseded()) return;
  if (state.current && state.current.id !== thread.id) socket.unsubscribe(state.current.id);
  state.current = thread;
  state.messages.clear();
  state.steps.clear();
  state.artifacts.clear();
  state.lastSeq = thread.lastEventSeq;
  upsertThread(thread);
  history.replaceState(null, "", `#${thread.id}`);
  document.body.classList.add("thread-open");
  $("empty").hidden = true;
  $("thread-view").hidden = false;
  renderThreadHead();
  $("message-list").replaceChildren();
  // Subscribe from the thread's current seq first, then read the page: an event in between
  // arrives on the socket and is merged, so nothing falls in the gap.
  socket.subscribe(thread.id, state.lastSeq);
  const params = new URLSearchParams({ limit: "50" });
  if (focusSeq) params.set("before", String(focusSeq + 25));
  const page = await api("GET", `threads/${encodeURIComponent(thread.id)}/messages/?${params}`);
  // Closed meanwhile (deleted, or left) or opened again: the newer state stays.
  if (superseded() || !state.current || state.current.id !== thread.id) return;
  state.hasOlder = page.hasOlder;
  state.oldestSeq = page.messages.length ? page.messages[0].seq : null;
  for (const message of page.messages) upsertMessage(message, { quiet: true });
  renderAllMessages();
  await loadArtifacts(thread.id);
  if (superseded()) return;
  if (focusSeq) {
    const target = [...state.messages.values()].find((m) => m.seq === focusSeq);
    const node = target && document.querySelector(`[data-message-id="${CSS.escape(target.id)}"]`);
    if (node) {
      node.scrollIntoView({ block: "center" });
      node.classList.add("highlight");
    }
  } else {
    scrollToBottom();
  }
  markRead();
  $("composer-text").focus();
}

export function renderThreadHead() {
  const thread = state.current;
  $("thread-title").textContent = thread.title || "New chat";
  const names = thread.members.map((m) => m.username).join(", ");
  const topicNames = new Map(state.topics.map((t) => [t.id, t.name]));
  const topics = thread.topicIds.map((id) => topicNames.get(id) || id).join(", ");
  $("thread-meta").textContent = `Members: ${names}` + (topics ? ` · Topics: ${topics}` : "");
  const mine = myMembership(thread);
  const owns = (mine && mine.role === "owner") || state.me.isAdmin;
  $("delete-thread").hidden = !owns;
  $("add-member").hidden = !owns;
  $("leave-thread").hidden = !mine || mine.role === "owner";
  document.title = `${thread.title || "New chat"} · Threadline`;
}

$("delete-thread").addEventListener("click", async () => {
  const thread = state.current;
  if (!thread || !confirm(`Delete "${thread.title}" with all its messages and files?`)) return;
  try {
    await api("DELETE", `threads/${encodeURIComponent(thread.id)}/`);
    closeThread(thread.id);
  } catch (error) {
    showError(error);
  }
});

$("add-member").addEventListener("click", async () => {
  const thread = state.current;
  const names = (prompt("Add members (usernames, comma separated):") || "")
    .split(",").map((s) => s.trim()).filter(Boolean);
  if (!thread || !names.length) return;
  try {
    Object.assign(thread, await api("POST", `threads/${encodeURIComponent(thread.id)}/members/`, { userIds: names }));
    renderThreadHead();
  } catch (error) {
    const fields = error.body && error.body.error && error.body.error.fields;
    showError(fields && fields.userIds ? new Error(`Unknown users: ${[].concat(fields.userIds).join(", ")}`) : error);
  }
});

$("leave-thread").addEventListener("click", async () => {
  const thread = state.current;
  if (!thread || !confirm(`Leave "${thread.title}"? You will no longer see it.`)) return;
  try {
    await api("DELETE", `threads/${encodeURIComponent(thread.id)}/members/${encodeURIComponent(state.me.id)}/`);
    closeThread(thread.id);
  } catch (error) {
    showError(error);
  }
});

export function closeThread(threadId) {
  state.threads.delete(threadId);
  state.threadOrder = state.threadOrder.filter((id) => id !== threadId);
  if (state.current && state.current.id === threadId) {
    socket.unsubscribe(threadId);
    state.current = null;
    $("thread-view").hidden = true;
    $("empty").hidden = false;
    document.body.classList.remove("thread-open");
    history.replaceState(null, "", "#");
  }
  renderThreadList();
}

$("back").addEventListener("click", () => {
  document.body.classList.remove("thread-open");
  $("search").focus();
});

export const markRead = debounce(async () => {
  const thread = state.current;
  if (!thread || document.hidden) return;
  const newest = Math.max(0, ...[...state.messages.values()].map((m) => m.seq || 0));
  const mine = myMembership(thread);
  if (!mine || newest <= (mine.lastReadSeq || 0)) return;
  try {
    const result = await api("POST", `threads/${encodeURIComponent(thread.id)}/read/`, { seq: newest });
    mine.lastReadSeq = result.lastReadSeq;
    renderThreadList();
  } catch {
    /* an unread marker is not worth an error message */
  }
}, 300);
document.addEventListener("visibilitychange", () => markRead());

