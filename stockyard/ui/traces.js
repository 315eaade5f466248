// Traces: a filterable, paginated table with a live tail, and one trace in detail.

import { del, enc, get } from "./api.js";
import { copyButton, field, h, mount, table } from "./dom.js";
import { formatInt, formatLatency, formatTime, formatUsd, isSse, prettyBody, reassembleSse, responsesText } from "./format.js";
import { emptyState } from "./overview.js";

const FILTERS = ["q", "since", "until", "model", "provider", "status", "key", "user", "tag", "outcome"];
const PLACEHOLDERS = { since: "2024-05-01", until: "2024-05-01", q: "words in prompt or answer", tag: "team:search" };
const OUTCOMES = ["", "ok", "upstream_error", "error", "rejected", "client_disconnected", "stream_broken"];
const TAIL_MS = 2000;

function cost(t) {
  if (t.cost_status === "unknown") return "unknown";
  return formatUsd(t.cost_uc) + (t.usage_estimated ? " (est.)" : "");
}

/** A trace's tags (stored as a JSON object) as "team=search, feature=summaries". */
export function tagText(tags) {
  if (!tags) return "";
  try {
    return Object.entries(typeof tags === "string" ? JSON.parse(tags) : tags).map(([k, v]) => `${k}=${v}`).join(", ");
  } catch {
    return String(tags);
  }
}

const COLUMNS = [
  { label: "time (UTC)", value: (t) => h("a", { href: `#/traces/${t.id}` }, formatTime(t.ts)) },
  { label: "key", value: (t) => t.key_name || t.key_id || "—" },
  { label: "user", value: (t) => t.end_user || "—" },
  { label: "tags", value: (t) => tagText(t.tags) || "—", class: "wrap" },
  { label: "provider", value: (t) => t.provider || "—" },
  { label: "model", value: (t) => t.served_model && t.served_model !== t.model ? `${t.model} → ${t.served_model}` : (t.model || "—") },
  { label: "status", value: (t) => h("span", { class: t.status >= 400 ? "badge bad" : "badge" }, String(t.status), t.outcome !== "ok" ? ` ${t.outcome}` : "") },
  { label: "latency", value: (t) => formatLatency(t.latency_us), class: "num" },
  { label: "tokens in/out", value: (t) => `${formatInt(t.prompt_tokens)} / ${formatInt(t.completion_tokens)}`, class: "num" },
  { label: "cost", value: cost, class: "num" },
];

export async function traces(view) {
  const inputs = {};
  for (const name of FILTERS) {
    inputs[name] = name === "outcome"
      ? h("select", { name }, OUTCOMES.map((o) => h("option", { value: o }, o || "any")))
      : h("input", { name, size: name === "status" ? 4 : name === "q" ? 24 : 14, type: name === "q" ? "search" : "text",
        placeholder: PLACEHOLDERS[name] || "" });
  }
  const tail = h("input", { type: "checkbox" });
  const results = h("div", {});
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Load more");
  const message = h("p", { class: "error", role: "alert" });
  let rows = [], cursor = null, timer = null, filters = {};

  const draw = (fresh = new Set()) => {
    const anyFilter = Object.values(filters).some(Boolean);
    mount(results, !rows.length && !anyFilter ? emptyState()
      : table(COLUMNS, rows, { empty: "No traces match these filters.",
        rowAttrs: (t) => ({ class: fresh.has(t.id) ? "clickable fresh" : "clickable" }) }));
    more.hidden = !cursor;
  };
  const load = async (append) => {
    message.textContent = "";
    try {
      const page = await get("/api/traces", { ...filters, limit: 50, cursor: append ? cursor : "" });
      rows = append ? rows.concat(page.data) : page.data;
      cursor = page.next_cursor;
      draw();
    } catch (err) {
      message.textContent = err.message;
    }
  };
  const poll = async () => {
    // Newer traces than the newest shown: since = its time (inclusive), minus the ones already shown.
    const newest = rows[0];
    try {
      const page = await get("/api/traces", { ...filters, limit: 100, since: newest ? newest.ts : filters.since });
      const seen = new Set(rows.map((t) => t.id));
      const added = page.data.filter((t) => !seen.has(t.id));
      if (added.length) {
        rows = added.concat(rows);
        draw(new Set(added.map((t) => t.id)));
      }
    } catch (err) {
      message.textContent = err.message;
    }
  };
  tail.addEventListener("change", () => {
    clearInterval(timer);
    timer = tail.checked ? setInterval(poll, TAIL_MS) : null;
  });
  more.addEventListener("click", () => load(true));
  const form = h("form", { class: "inline", onsubmit: (e) => {
    e.preventDefault();
    filters = Object.fromEntries(FILTERS.map((n) => [n, inputs[n].value.trim()]).filter(([, v]) => v));
    load(false);
  } }, FILTERS.map((n) => field(n === "q" ? "search" : n, inputs[n])), h("button", { type: "submit" }, "Filter"),
  h("label", { class: "field" }, h("span", {}, "live tail"), tail));
  mount(view, h("h1", {}, "Traces"), form, message, results, h("p", {}, more));
  await load(false);
  return () => clearInterval(timer);
}

const stored = (text) => text !== null && text !== undefined && text !== "";

function body(title, text, truncated, endpoint, erased) {
  if (!stored(text)) return [h("h2", {}, title), h("p", { class: "muted" }, erased ? "erased" : "not stored")];
  const parts = [h("h2", {}, title, truncated ? " (truncated)" : "")];
  if (isSse(text)) {
    const sse = reassembleSse(text);
    parts.push(h("p", { class: "muted" }, `streamed: ${sse.events} events, reassembled:`), h("pre", { class: "answer" }, sse.text),
      h("details", {}, h("summary", {}, "raw events"), h("pre", {}, text)));
  } else if (endpoint === "responses" && responsesText(text) !== null) {
    parts.push(h("pre", { class: "answer" }, responsesText(text)),
      h("details", {}, h("summary", {}, "JSON"), h("pre", {}, prettyBody(text))));
  } else {
    parts.push(h("pre", {}, prettyBody(text)));
  }
  return parts;
}

export async function traceDetail(view, id) {
  const message = h("p", { role: "alert" });
  const fail = (err) => { message.className = "error"; message.textContent = err.message; };
  let erased = false; // this view erased the bodies: say "erased" where they were, not "not stored"

  // The bodies and their words in the search index go, and what the request stored for the Responses
  // API (its stored response, the items its turn appended to a conversation); the trace row stays.
  const erase = async (t) => {
    if (!window.confirm(`Erase the stored request and response bodies of trace ${t.id}? They and their words in ` +
      "the search index are deleted, and so are the stored response and conversation items its request made; " +
      "the trace itself (time, key, user, tags, model, tokens, cost, status) stays. This cannot be undone.")) return;
    try {
      const answer = await del(`/api/traces/${enc(t.id)}/body`);
      erased = answer.erased;
      const responses = (answer.responses || []).length, items = answer.conversation_items || 0;
      const stored = responses || items
        ? ` Also erased: ${responses} stored response(s), ${items} conversation item(s).` : "";
      message.className = "ok";
      message.textContent = (answer.erased ? `Erased the stored request and response bodies of ${t.id}; the trace stays.`
        : `${t.id} had no stored bodies left to erase.`) + stored;
      await refresh();
    } catch (err) { fail(err); }
  };

  const refresh = async () => {
    const t = await get(`/api/traces/${enc(id)}`);
    const kv = (pairs) => h("dl", { class: "kv" }, pairs.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v === null || v === undefined ? "—" : v)]));
    const bodies = stored(t.request_body) || stored(t.response_body);
    mount(view,
      h("p", {}, h("a", { href: "#/traces" }, "← all traces")),
      h("h1", {}, "Trace ", h("code", { id: "trace-id" }, t.id), " ", copyButton(t.id, "Copy id")),
      message,
      h("div", { class: "grid" },
        h("div", { class: "card" }, kv([
          ["time", formatTime(t.ts)], ["endpoint", `${t.endpoint} (${t.dialect})`], ["key", t.key_name ? `${t.key_name} (${t.key_id})` : t.key_id], ["project", t.project],
          ["user", t.end_user], ["tags", tagText(t.tags) || null],
          ["provider", t.provider], ["model", t.model], ["served model", t.served_model], ["served mode", t.served_mode], ["stream", t.stream ? "yes" : "no"],
          ["status", `${t.status} ${t.outcome}`], ["error", t.error_message ? `${t.error_type}: ${t.error_message}` : null],
          ["upstream request id", t.upstream_request_id]])),
        h("div", { class: "card" }, kv([
          ["latency", formatLatency(t.latency_us)], ["first byte", formatLatency(t.ttfb_us)],
          ["prompt tokens", formatInt(t.prompt_tokens)], ["completion tokens", formatInt(t.completion_tokens)],
          ["cached tokens", formatInt(t.cached_tokens)], ["reasoning tokens", formatInt(t.reasoning_tokens)],
          ["usage", t.usage_estimated ? "estimated" : "reported by the provider"],
          ["cost", `${cost(t)} (${t.cost_status})`], ["cache hit", t.cache_hit ? `yes, saved ${formatUsd(t.cost_saved_uc)}` : "no"]]))),
      h("h2", {}, "Attempts"),
      table([
        { label: "#", value: (a) => String(a.attempt) },
        { label: "trace", value: (a) => h("a", { href: `#/traces/${a.id}` }, a.id) },
        { label: "provider", value: (a) => a.provider || "—" },
        { label: "model", value: (a) => a.served_model || a.model || "—" },
        { label: "status", value: (a) => `${a.status} ${a.outcome}` },
        { label: "latency", value: (a) => formatLatency(a.latency_us), class: "num" },
        { label: "cost", value: cost, class: "num" },
        { label: "error", value: (a) => a.error_message || "", class: "wrap" },
      ], t.attempts || [], { empty: "One attempt: this request was not retried or failed over." }),
      bodies ? h("p", {}, h("button", { type: "button", class: "small danger", onclick: () => erase(t),
        title: "Delete this trace's stored request and response bodies; the trace stays" }, "Erase bodies")) : null,
      body("Request body", t.request_body, t.request_truncated, t.endpoint, erased),
      body("Response body", t.response_body, t.response_truncated, t.endpoint, erased));
  };
  await refresh();
}
