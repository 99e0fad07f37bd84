/* Threadline web UI, the page's entry point. Plain ES modules, no build step: the page is a
 * client of the public REST API (/api/v1/) and the event socket (/ws/v1/events/), like any
 * other client. docs/ui.md lists the modules.
 *
 * Safety rules every module keeps:
 *  - Text from users, models and tools (titles, names, file names, snippets) goes into the page
 *    with textContent only.
 *  - Message bodies are Markdown: marked turns them into HTML with raw HTML escaped (never
 *    passed through), then DOMPurify removes anything active (scripts, handlers, javascript:
 *    links) before the result touches the DOM (markdown.js). The page's CSP forbids inline
 *    script as well.
 */

import "./composer.js";
import "./search.js";
import { showError } from "./errors.js";
import { catchUp, onEvent } from "./events.js";
import { loadMe, loadModels } from "./header.js";
import { socket } from "./socket.js";
import { state } from "./state.js";
import { loadThreads, loadTopics, openThread } from "./threads.js";

async function start() {
  await Promise.all([loadMe(), loadModels(), loadTopics()]);
  await loadThreads();
  socket.start({ onEvent, onReconnect: catchUp });
  const wanted = location.hash.slice(1);
  if (wanted && state.threads.has(wanted)) openThread(wanted).catch(showError);
  else if (wanted) openThread(wanted).catch(() => history.replaceState(null, "", "#"));
}

start().catch(showError);
