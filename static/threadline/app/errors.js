/* Where errors are shown: under the composer, or in an alert when no thread is open. */

import { $ } from "./util.js";

export function composerError(text) {
  $("composer-error").textContent = text;
  $("composer-error").hidden = !text;
}

export function showError(error) {
  if (error && error.status === 401) return;
  const text = error && error.message ? error.message : String(error);
  composerError(text);
  if ($("thread-view").hidden) alert(text);
}
