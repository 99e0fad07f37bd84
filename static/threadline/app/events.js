/* What the event socket brings for the page: deltas of a streaming reply (placed by their
 * offset, so a delta seen twice or out of a reconnect changes nothing), new and changed
 * messages, agent steps, artifacts, and changes to threads and members. */

import { api } from "./api.js";
import { refreshBalance } from "./header.js";
import {
  addArtifact,
  fetchMessage,
  removeMessage,
  scheduleRender,
  upsertMessage,
} from "./messages.js";
import { socket } from "./socket.js";
import { state } from "./state.js";
import { closeThread, loadThreads, markRead, openThread, renderThreadHead, upsertThread } from "./threads.js";
import { codePointLength, codePointPrefix } from "./util.js";

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

export function onEvent(event) {
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

// After a reconnect: replayed events arrive by themselves; text that streamed while we were
// away is in each unfinished reply's stored copy.
export function catchUp() {
  for (const message of state.messages.values()) {
    if (message.status === "queued" || message.status === "streaming") fetchMessage(message.id);
  }
  loadThreads().catch(() => {});
}

