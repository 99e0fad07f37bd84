/* The REST API (/api/v1/) with the session cookie and the CSRF token, and the page's settings
 * (a JSON data block in the page, not code: the CSP allows no inline script). */

import { safeJson } from "./util.js";

export const config = JSON.parse(document.getElementById("tl-config").textContent);

export function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error && body.error.message) || `Request failed (${status}).`);
    this.status = status;
    this.body = body;
  }
}

export async function api(method, path, body) {
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
