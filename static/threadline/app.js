/* Threadline web UI. Plain JavaScript, no build step: the page is a client of the public REST
 * API (/api/v1/) and the event socket (/ws/v1/events/), like any other client.
 *
 * Safety rules this file keeps:
 *  - Text from users, models and tools (titles, names, file names, snippets) goes into the page
 *    with textContent only.
 *  - Message bodies are Markdown: marked turns them into HTML with raw HTML escaped (never
 *    passed through), then DOMPurify removes anything active (scripts, handlers, javascript:
 *    links) before the result touches the DOM. The page's CSP forbids inline script as well.
 */
(() => {
  "use strict";

  const config = JSON.parse(document.getElementById("tl-config").textContent);
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- small helpers

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error && body.error.message) || `Request failed (${status}).`);
      this.status = status;
      this.body = body;
    }
  }

  async function api(method, path, body) {
    const options = {
      method,
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    };
    if (method !== "GET") options.headers["X-CSRFToken"] = csrfToken();
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(`/api/v1/${path}`, options);
    const text = await response.text();
    const data = text ? safeJson(text) : null;
    const code = data && data.error && data.error.code;
    if (response.status === 401 || code === "not_authenticated") {
      // The session ended (signed out in another tab, or expired): sign in again.
      location.href = "/login/?next=/";
      throw new ApiError(401, data);
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  function safeJson(text) {
    try {
      return JSON.parse(text);
    } catch {
      return null;
    }
  }

  function clientId(prefix) {
    const bytes = new Uint8Array(12);
    crypto.getRandomValues(bytes);
    return prefix + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // The server counts offsets in characters (code points); JavaScript strings count UTF-16
  // units, so an emoji would otherwise shift every later delta by one.
  function codePointLength(text) {
    let count = 0;
    for (let i = 0; i < text.length; i++) {
      const code = text.charCodeAt(i);
      if (code < 0xd800 || code > 0xdbff) count++;
    }
    return count;
  }

  function codePointPrefix(text, length) {
    let index = 0;
    for (let seen = 0; seen < length && index < text.length; seen++) {
      const code = text.charCodeAt(index);
      index += code >= 0xd800 && code <= 0xdbff ? 2 : 1;
    }
    return text.slice(0, index);
  }

  function timeLabel(iso) {
    if (!iso) return "";
    const when = new Date(iso);
    const now = new Date();
    const sameDay = when.toDateString() === now.toDateString();
    return sameDay
      ? when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : when.toLocaleDateString([], { month: "short", day: "numeric" });
  }

  function bytesLabel(size) {
    if (size < 1024) return `${size} B`;
    if (size < 1024 * 1024) return `${(size / 1024).toFixed(1)} KB`;
    return `${(size / 1024 / 1024).toFixed(1)} MB`;
  }

  // Money arrives as exact decimal strings; trim zeros past the cents but never round.
  function moneyLabel(value) {
    const [whole, fraction = ""] = String(value).split(".");
    const digits = fraction.replace(/0+$/, "").padEnd(2, "0");
    return `$${whole}.${digits}`;
  }

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
  }

  // ---------------------------------------------------------------- Markdown, sanitised

  const markdown = new marked.Marked({
    gfm: true,
    breaks: true,
    renderer: {
      // Raw HTML in a message is shown as text, never parsed as HTML.
      html(token) {
        return escapeHtml(token.text);
      },
    },
  });

  function escapeHtml(text) {
    return String(text)
      .replace(/&/g, "&amp;")
      .replace(/</g, "&lt;")
      .replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;")
      .replace(/'/g, "&#39;");
  }

  const PURIFY = {
    ALLOWED_TAGS: [
      "a", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6",
      "hr", "i", "li", "ol", "p", "pre", "s", "strong", "table", "tbody", "td", "th", "thead",
      "tr", "ul", "input", "span",
    ],
    ALLOWED_ATTR: ["href", "title", "align", "type", "checked", "disabled", "class"],
    ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#|\/(?!\/))/i,
    RETURN_DOM_FRAGMENT: true,
  };

  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A") {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer nofollow");
    }
    if (node.tagName === "INPUT" && node.getAttribute("type") !== "checkbox") node.remove();
    if (node.tagName === "INPUT") node.setAttribute("disabled", "");
  });

  function renderMarkdown(target, text) {
    let fragment;
    try {
      fragment = DOMPurify.sanitize(markdown.parse(text || ""), PURIFY);
    } catch {
      fragment = document.createTextNode(text || "");
    }
    target.replaceChildren(fragment);
  }

  // ---------------------------------------------------------------- state

  const state = {
    me: null,
    models: [],
    topics: [],
    threads: new Map(), // id → thread
    threadOrder: [],
    threadCursor: null,
    topicFilter: "",
    current: null, // the open thread
    messages: new Map(), // id → message, for the open thread
    hasOlder: false,
    oldestSeq: null,
    lastSeq: 0, // the newest event seq applied for the open thread
    steps: new Map(), // messageId → last agent step
    artifacts: new Map(), // messageId → [artifact]
    files: new Map(), // fileId → metadata (or a promise of it)
    pending: [], // files being attached: {key, file, progress, id, error}
    loadingOlder: false,
  };

  function usernameOf(userId) {
    if (!userId) return "AI";
    const member = state.current && state.current.members.find((m) => m.userId === userId);
    return member ? member.username : "former member";
  }

  function myMembership(thread) {
    return thread.members.find((m) => m.userId === state.me.id);
  }

  function isUnread(thread) {
    const mine = myMembership(thread);
    return !!mine && thread.lastMessageSeq > (mine.lastReadSeq || 0);
  }

  // ---------------------------------------------------------------- header: me, models, balance

  async function loadMe() {
    state.me = await api("GET", "me/");
    showBalance();
  }

  function showBalance() {
    const balance = state.me && state.me.balance;
    $("balance").textContent = balance === null || balance === undefined ? "" : `Balance ${moneyLabel(balance)}`;
  }

  async function loadModels() {
    const data = await api("GET", "models/");
    state.models = data.models;
    const select = $("model");
    const saved = localStorage.getItem("tl-model");
    select.replaceChildren(
      ...state.models.map((m) =>
        el("option", { value: m.id, text: m.name + (m.isDefault ? " (default)" : "") }),
      ),
    );
    const chosen =
      state.models.find((m) => m.id === saved) || state.models.find((m) => m.isDefault);
    if (chosen) select.value = chosen.id;
    select.disabled = state.models.length === 0;
    if (state.models.length === 0) select.append(el("option", { text: "No models available" }));
  }

  $("model").addEventListener("change", (event) => {
    localStorage.setItem("tl-model", event.target.value);
  });

  // ---------------------------------------------------------------- thread list

  async function loadTopics() {
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

  async function loadThreads({ more = false } = {}) {
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

  function upsertThread(thread, { toTop = false } = {}) {
    state.threads.set(thread.id, thread);
    if (toTop || !state.threadOrder.includes(thread.id)) {
      state.threadOrder = [thread.id, ...state.threadOrder.filter((id) => id !== thread.id)];
    }
    renderThreadList();
  }

  function renderThreadList() {
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

  // ---------------------------------------------------------------- search

  const runSearch = debounce(async (query) => {
    const box = $("search-results");
    if (!query.trim()) {
      box.hidden = true;
      box.replaceChildren();
      return;
    }
    try {
      const data = await api("GET", `search/?${new URLSearchParams({ q: query })}`);
      const items = [];
      for (const thread of data.threads) {
        items.push(
          el(
            "li",
            {},
            el("button", { type: "button", class: "hit", onclick: () => openThread(thread.id) },
              el("strong", { text: thread.title })),
          ),
        );
      }
      for (const hit of data.messages) {
        const title = (state.threads.get(hit.threadId) || {}).title || "a thread";
        items.push(
          el(
            "li",
            {},
            el(
              "button",
              { type: "button", class: "hit", dataset: { testid: "search-hit" }, onclick: () => openThread(hit.threadId, hit.seq) },
              el("span", { class: "muted small", text: `in ${title} · ${timeLabel(hit.createdAt)}` }),
              el("span", { class: "snippet", text: hit.snippet }),
            ),
          ),
        );
      }
      box.replaceChildren(
        items.length ? el("ul", {}, ...items) : el("p", { class: "muted small pad", text: "Nothing found." }),
      );
    } catch (error) {
      box.replaceChildren(el("p", { class: "error small pad", text: error.message }));
    }
    box.hidden = false;
  }, 250);

  $("search").addEventListener("input", (event) => runSearch(event.target.value));

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

  async function openThread(threadId, focusSeq) {
    const thread = await api("GET", `threads/${encodeURIComponent(threadId)}/`);
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
    if (!state.current || state.current.id !== thread.id) return;
    state.hasOlder = page.hasOlder;
    state.oldestSeq = page.messages.length ? page.messages[0].seq : null;
    for (const message of page.messages) upsertMessage(message, { quiet: true });
    renderAllMessages();
    await loadArtifacts(thread.id);
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

  function renderThreadHead() {
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

  function closeThread(threadId) {
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

  const markRead = debounce(async () => {
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

  function upsertMessage(message, { quiet = false } = {}) {
    const known = state.messages.get(message.id);
    // A late copy (an older snapshot fetched over REST) must not shorten streamed text.
    if (known && known.status === "streaming" && message.status === "streaming") {
      if (codePointLength(message.text) < codePointLength(known.text)) message.text = known.text;
    }
    state.messages.set(message.id, Object.assign(known || {}, message));
    if (!quiet) renderMessage(state.messages.get(message.id));
  }

  function renderAllMessages() {
    $("message-list").replaceChildren(...sortedMessages().map(buildMessage));
  }

  function renderMessage(message) {
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

  function scrollToBottom() {
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

  function removeMessage(messageId) {
    state.messages.delete(messageId);
    const node = document.querySelector(`[data-message-id="${CSS.escape(messageId)}"]`);
    if (node) node.remove();
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

  async function loadArtifacts(threadId) {
    try {
      const data = await api("GET", `threads/${encodeURIComponent(threadId)}/artifacts/`);
      if (!state.current || state.current.id !== threadId) return;
      for (const artifact of data.artifacts) addArtifact(artifact, { quiet: true });
      renderAllMessages();
    } catch {
      /* artifacts are extras; the messages are already shown */
    }
  }

  function addArtifact(artifact, { quiet = false } = {}) {
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

  // ---------------------------------------------------------------- composing

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

  function composerError(text) {
    $("composer-error").textContent = text;
    $("composer-error").hidden = !text;
  }

  async function fetchMessage(messageId) {
    try {
      const message = await api("GET", `messages/${encodeURIComponent(messageId)}/`);
      if (state.current && message.threadId === state.current.id) upsertMessage(message);
      return message;
    } catch {
      return null;
    }
  }

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

  // ---------------------------------------------------------------- live events

  function applyDelta(data) {
    const message = state.messages.get(data.messageId);
    if (!message) {
      // A reply we have not seen yet: its REST copy holds every character published so far.
      fetchMessage(data.messageId);
      return;
    }
    const held = codePointLength(message.text || "");
    if (data.offset > held) {
      // A gap (a delta lost while reconnecting): the stored text is the truth; refetch it.
      fetchMessage(data.messageId);
      return;
    }
    // Offset 0 replaces the text; otherwise anything from the offset on is rewritten, so a
    // delta seen twice changes nothing.
    message.text = codePointPrefix(message.text || "", data.offset) + data.text;
    if (message.status === "queued") message.status = "streaming";
    scheduleRender(message);
  }

  // Deltas can arrive faster than the screen refreshes; draw each message once per frame.
  const dirty = new Set();
  function scheduleRender(message) {
    if (!dirty.size) requestAnimationFrame(flushRenders);
    dirty.add(message.id);
  }
  function flushRenders() {
    for (const id of dirty) {
      const message = state.messages.get(id);
      if (!message) continue;
      const node = document.querySelector(`[data-message-id="${CSS.escape(id)}"]`);
      const step = state.steps.get(id);
      const stepLine = node && node.querySelector(".step");
      if (node && node.dataset.status === message.status && !step === !stepLine) {
        // Only the text or the step grew: redraw those, not the attachments and artifacts.
        const stick = isNearBottom();
        renderMarkdown(node.querySelector(".body"), message.text);
        if (stepLine) stepLine.textContent = stepLabel(step);
        if (stick) scrollToBottom();
      } else {
        renderMessage(message);
      }
    }
    dirty.clear();
  }

  function onEvent(event) {
    const thread = state.current;
    if (event.type === "chatThreadAdded") {
      upsertThread(event.data, { toTop: true });
      socket.subscribe(event.data.id);
      return;
    }
    if (!thread || event.threadId !== thread.id) {
      noteActivityElsewhere(event);
      return;
    }
    if (typeof event.seq === "number" && event.type !== "chatMessageDelta") {
      state.lastSeq = Math.max(state.lastSeq, event.seq);
    }
    const data = event.data || {};
    switch (event.type) {
      case "chatMessageAdded":
      case "chatMessageUpdated":
        upsertMessage(data);
        thread.lastMessageSeq = Math.max(thread.lastMessageSeq, data.seq || 0);
        thread.lastActivityAt = data.createdAt || thread.lastActivityAt;
        upsertThread(thread, { toTop: event.type === "chatMessageAdded" });
        markRead();
        break;
      case "chatMessageDeleted":
        removeMessage(data.id);
        break;
      case "chatMessageDelta":
        applyDelta(data);
        break;
      case "chatMessageCompleted":
        state.steps.delete(data.message.id);
        upsertMessage(data.message);
        refreshBalance();
        break;
      case "chatAgentStep":
        state.steps.set(data.messageId, data);
        if (state.messages.has(data.messageId)) scheduleRender(state.messages.get(data.messageId));
        break;
      case "chatArtifactAdded":
        addArtifact(data);
        break;
      case "chatThreadUpdate":
        Object.assign(thread, data);
        upsertThread(thread);
        renderThreadHead();
        break;
      case "chatMemberAdded":
      case "chatMemberRemoved":
        api("GET", `threads/${encodeURIComponent(thread.id)}/`).then((fresh) => {
          Object.assign(thread, fresh);
          renderThreadHead();
        }).catch(() => closeThread(thread.id));
        break;
      case "chatThreadDeleted":
        closeThread(thread.id);
        break;
      case "resync":
        openThread(thread.id);
        break;
      default:
        break;
    }
  }

  function noteActivityElsewhere(event) {
    const other = state.threads.get(event.threadId);
    if (!other) return;
    if (event.type === "chatMessageAdded") {
      other.lastMessageSeq = Math.max(other.lastMessageSeq, event.data.seq || 0);
      other.lastActivityAt = event.data.createdAt || other.lastActivityAt;
      upsertThread(other, { toTop: true });
    } else if (event.type === "chatThreadDeleted") {
      closeThread(event.threadId);
    } else if (event.type === "chatThreadUpdate") {
      upsertThread(Object.assign(other, event.data));
    }
  }

  const refreshBalance = debounce(async () => {
    try {
      await loadMe();
    } catch {
      /* shown again on the next reply */
    }
  }, 200);

  // One socket for the page. It reconnects by itself (backing off to 5 s) and, once back,
  // resubscribes the open thread from the last event it applied, so the server replays what
  // was missed; the open thread's messages are refetched for text streamed meanwhile.
  const socket = (() => {
    let ws = null;
    let attempt = 0;
    let ping = null;
    const followed = new Set();

    function url() {
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      return `${scheme}//${location.host}/ws/v1/events/`;
    }

    function send(frame) {
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
    }

    function connect() {
      ws = new WebSocket(url());
      ws.addEventListener("open", () => {
        const wasOffline = attempt > 0;
        attempt = 0;
        $("offline").hidden = true;
        document.body.classList.remove("offline");
        for (const threadId of state.threadOrder.slice(0, 100)) followed.add(threadId);
        for (const threadId of followed) {
          const current = state.current && state.current.id === threadId;
          send(current ? { action: "subscribe", threadId, lastSeq: state.lastSeq } : { action: "subscribe", threadId });
        }
        clearInterval(ping);
        ping = setInterval(() => send({ action: "ping", ref: Date.now() }), 25000);
        if (wasOffline) catchUp();
      });
      ws.addEventListener("message", (message) => {
        const event = safeJson(message.data);
        if (!event) return;
        if (event.type === "error") {
          if (event.threadId) followed.delete(event.threadId);
          return;
        }
        if (event.type === "subscribed" || event.type === "pong") return;
        onEvent(event);
      });
      ws.addEventListener("close", (event) => {
        clearInterval(ping);
        if (event.code === 4401) {
          location.href = "/login/?next=/";
          return;
        }
        attempt++;
        $("offline").hidden = false;
        document.body.classList.add("offline");
        setTimeout(connect, Math.min(5000, 250 * 2 ** attempt));
      });
    }

    return {
      start: connect,
      subscribe(threadId, lastSeq) {
        followed.add(threadId);
        send({ action: "subscribe", threadId, lastSeq });
      },
      unsubscribe(threadId) {
        // Keep following for unread markers; only the replay position matters for the open one.
        send({ action: "unsubscribe", threadId });
        send({ action: "subscribe", threadId });
      },
    };
  })();

  // After a reconnect: replayed events arrive by themselves; text that streamed while we were
  // away is in each unfinished reply's stored copy.
  function catchUp() {
    for (const message of state.messages.values()) {
      if (message.status === "queued" || message.status === "streaming") fetchMessage(message.id);
    }
    loadThreads().catch(() => {});
  }

  // ---------------------------------------------------------------- errors and start

  function showError(error) {
    if (error && error.status === 401) return;
    const text = error && error.message ? error.message : String(error);
    composerError(text);
    if ($("thread-view").hidden) alert(text);
  }

  async function start() {
    await Promise.all([loadMe(), loadModels(), loadTopics()]);
    await loadThreads();
    socket.start();
    const wanted = location.hash.slice(1);
    if (wanted && state.threads.has(wanted)) openThread(wanted).catch(showError);
    else if (wanted) openThread(wanted).catch(() => history.replaceState(null, "", "#"));
  }

  start().catch(showError);
})();
