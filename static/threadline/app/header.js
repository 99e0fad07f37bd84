/* The top bar: who I am, my balance, my budgets and the model picker. */

import { api } from "./api.js";
import { state } from "./state.js";
import { $, debounce, el, moneyLabel } from "./util.js";

export async function loadMe() {
  state.me = await api("GET", "me/");
  showBalance();
}

function showBalance() {
  const balance = state.me && state.me.balance;
  $("balance").textContent = balance === null || balance === undefined ? "" : `Balance ${moneyLabel(balance)}`;
  showBudgets();
}

/* What each budget has left ("Today $0.40 left"), its limit and reset in the tooltip. */
function showBudgets() {
  const budgets = (state.me && state.me.budgets) || [];
  const target = $("budget");
  target.hidden = budgets.length === 0;
  target.replaceChildren(
    ...budgets.map((b) => {
      const when = b.period === "day" ? "Today" : "This month";
      const left = [];
      if (b.remaining !== null) left.push(moneyLabel(b.remaining));
      if (b.tokensRemaining !== null) left.push(`${b.tokensRemaining} tokens`);
      const limits = [];
      if (b.limit !== null) limits.push(moneyLabel(b.limit));
      if (b.tokenLimit !== null) limits.push(`${b.tokenLimit} tokens`);
      const owner = b.scope === "group" ? `Group ${b.group}: ` : "";
      return el("span", {
        class: "budget-item",
        "data-testid": "budget-item",
        text: `${owner}${when} ${left.join(" / ")} left`,
        title: `${owner}${limits.join(" and ")} per ${b.period}; resets ${new Date(b.resetsAt).toLocaleString()}`,
      });
    }),
  );
}

export const refreshBalance = debounce(async () => {
  try {
    await loadMe();
  } catch {
    /* shown again on the next reply */
  }
}, 200);

export async function loadModels() {
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
