// The admin API client: the admin key lives in sessionStorage and travels only in the
// Authorization header. A 401 anywhere sends the user back to sign-in with the server's message.

const STORAGE = "stockyard.adminKey";
let onUnauthorized = () => {};

export class ApiError extends Error {
  constructor(status, payload) {
    const err = (payload && payload.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.param = err.param || null;
    this.code = err.code || null;
  }
}

export function getKey() {
  return sessionStorage.getItem(STORAGE);
}

export function setKey(key) {
  sessionStorage.setItem(STORAGE, key);
}

export function clearKey() {
  sessionStorage.removeItem(STORAGE);
}

export function whenUnauthorized(fn) {
  onUnauthorized = fn;
}

/** "?a=1&b=2" from an object, leaving out empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const text = q.toString();
  return text ? "?" + text : "";
}

/** One API call; resolves to the parsed JSON, rejects with ApiError. */
export async function call(method, path, body) {
  const headers = { Authorization: "Bearer " + (getKey() || "") };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, cache: "no-store", credentials: "omit",
      body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, { error: { message: "the server did not answer: " + e.message } });
  }
  const payload = await resp.json().catch(() => null);
  if (!resp.ok) {
    const err = new ApiError(resp.status, payload);
    if (resp.status === 401) onUnauthorized(err.message);
    throw err;
  }
  return payload;
}

export const get = (path, params) => call("GET", path + query(params));
export const post = (path, body) => call("POST", path, body);
export const patch = (path, body) => call("PATCH", path, body);
export const del = (path) => call("DELETE", path);
export const enc = encodeURIComponent;
