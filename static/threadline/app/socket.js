/* One event socket for the page (/ws/v1/events/). It reconnects by itself (backing off to
 * 5 s) and, once back, resubscribes the open thread from the last event it applied, so the
 * server replays what was missed; `onReconnect` then refetches what streamed meanwhile. */

import { state } from "./state.js";
import { $, safeJson } from "./util.js";

let ws = null;
let attempt = 0;
let ping = null;
let handlers = { onEvent() {}, onReconnect() {} };
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
    if (wasOffline) handlers.onReconnect();
  });
  ws.addEventListener("message", (message) => {
    const event = safeJson(message.data);
    if (!event) return;
    if (event.type === "error") {
      if (event.threadId) followed.delete(event.threadId);
      return;
    }
    if (event.type === "subscribed" || event.type === "pong") return;
    handlers.onEvent(event);
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

export const socket = {
  start({ onEvent, onReconnect }) {
    handlers = { onEvent, onReconnect };
    connect();
  },
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
