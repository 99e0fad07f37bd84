/* The top bar: who I am, my balance and the model picker. */

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
