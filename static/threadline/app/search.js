/* Search over messages and threads (/api/v1/search/); a hit opens its thread. */

import { api } from "./api.js";
import { state } from "./state.js";
import { openThread } from "./threads.js";
import { $, debounce, el, timeLabel } from "./util.js";

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

