// Formatting: money from integer micro-cents without floats, times, tokens, bodies.

const UC_PER_USD = 100000000n; // 1 µ¢ = 1e-8 USD

/** µ¢ (integer, number/string/BigInt) → "$12.34" / "$0.000184": at least minPlaces decimals, up to 8.
 * The same rule as the server's pricing.format_usd, so a non-zero cost never shows as $0.00. */
export function formatUsd(uc, minPlaces = 2) {
  if (uc === null || uc === undefined || uc === "") return "—";
  let value = BigInt(uc);
  const sign = value < 0n ? "-" : "";
  if (value < 0n) value = -value;
  const dollars = value / UC_PER_USD;
  const digits = (value % UC_PER_USD).toString().padStart(8, "0");
  const places = Math.max(minPlaces, digits.replace(/0+$/, "").length);
  return `${sign}$${dollars}` + (places ? "." + digits.slice(0, places) : "");
}

/** Sum µ¢ values exactly. */
export function sumUc(values) {
  return values.reduce((acc, v) => acc + BigInt(v || 0), 0n);
}

/** µ¢ → dollars as a number, only for drawing (chart heights), never for showing money. */
export function ucToNumber(uc) {
  return Number(BigInt(uc || 0)) / 1e8;
}

export function formatInt(n) {
  if (n === null || n === undefined) return "—";
  return Number(n).toLocaleString("en-US");
}

export function formatLatency(us) {
  if (us === null || us === undefined) return "—";
  const ms = us / 1000;
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
}

/** ISO UTC time → "2024-05-01 12:30:05Z" (the console shows UTC, like the CLI). */
export function formatTime(iso) {
  if (!iso) return "—";
  return String(iso).replace("T", " ").replace(/\.\d+Z$/, "Z");
}

/** "YYYY-MM-DD" of a Date in UTC, days ago from now. */
export function utcDay(daysAgo = 0, now = new Date()) {
  const d = new Date(now.getTime() - daysAgo * 86400000);
  return d.toISOString().slice(0, 10);
}

export function monthStart(now = new Date()) {
  return now.toISOString().slice(0, 8) + "01";
}

/** Every UTC day from first to last inclusive, as "YYYY-MM-DD". */
export function dayRange(first, last) {
  const out = [];
  for (let t = Date.parse(first + "T00:00:00Z"); t <= Date.parse(last + "T00:00:00Z"); t += 86400000) {
    out.push(new Date(t).toISOString().slice(0, 10));
  }
  return out;
}

/** A streamed (SSE) answer reassembled into its text, from OpenAI, Anthropic or Gemini events. */
export function reassembleSse(body) {
  let text = "";
  let events = 0;
  let usage = null;
  for (const line of String(body).split(/\r?\n/)) {
    if (!line.startsWith("data:")) continue;
    const data = line.slice(5).trim();
    if (!data || data === "[DONE]") continue;
    let ev;
    try { ev = JSON.parse(data); } catch { continue; }
    events += 1;
    for (const choice of ev.choices || []) {
      text += (choice.delta && typeof choice.delta.content === "string" ? choice.delta.content : "")
        + (typeof choice.text === "string" ? choice.text : "");
    }
    if (ev.type === "content_block_delta" && ev.delta && typeof ev.delta.text === "string") text += ev.delta.text;
    if (ev.type === "response.output_text.delta" && typeof ev.delta === "string") text += ev.delta;
    for (const cand of ev.candidates || []) {
      for (const part of (cand.content && cand.content.parts) || []) if (typeof part.text === "string") text += part.text;
    }
    usage = ev.usage || ev.usageMetadata || (ev.message && ev.message.usage) || (ev.response && ev.response.usage) || usage;
  }
  return { text, events, usage };
}

export function isSse(body) {
  return /^(data|event):/m.test(String(body || "").slice(0, 200));
}

/** The text of a Responses API body: a request's instructions and input, or a response's output;
 * null for any other body. */
export function responsesText(body) {
  let doc;
  try { doc = JSON.parse(body); } catch { return null; }
  if (!doc || typeof doc !== "object") return null;
  const parts = (content) => (typeof content === "string" ? [content]
    : (Array.isArray(content) ? content : []).map((p) => (p && typeof p.text === "string" ? p.text : "")).filter(Boolean));
  const item = (it) => {
    if (typeof it === "string") return it;
    if (!it || typeof it !== "object") return "";
    if (it.type === "function_call") return `[call ${it.name}(${it.arguments || ""})]`;
    if (it.type === "function_call_output") return `[result ${typeof it.output === "string" ? it.output : JSON.stringify(it.output)}]`;
    const text = parts(it.content).join("");
    return it.role ? `${it.role}: ${text}` : text;
  };
  if (doc.object === "response" && Array.isArray(doc.output)) return doc.output.map(item).filter(Boolean).join("\n");
  if (!("input" in doc)) return null;
  const input = typeof doc.input === "string" ? [doc.input] : (Array.isArray(doc.input) ? doc.input.map(item) : []);
  return [doc.instructions ? `instructions: ${doc.instructions}` : "", ...input].filter(Boolean).join("\n");
}

/** A body as readable text: pretty JSON when it parses, else the raw text. */
export function prettyBody(body) {
  if (body === null || body === undefined) return "";
  try {
    return JSON.stringify(JSON.parse(body), null, 2);
  } catch {
    return String(body);
  }
}

/** CSV text of a /api/costs report: the same columns and rows as `stockyard costs --csv`. */
export const COUNTS = ["requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens",
  "cache_write_tokens", "reasoning_tokens", "unknown_cost", "cost_uc"];

/** A CSV cell a spreadsheet shows as text: strings starting like a formula (= + - @ tab CR) get a
 * leading ' — the rule of csv_cell in stockyard/store/costs.py. */
export function csvCell(v) {
  let text = v === null || v === undefined ? "" : String(v);
  if (typeof v === "string" && /^[=+\-@\t\r]/.test(v)) text = "'" + text;
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

export function costsCsv(report) {
  const groups = report.groups || [report.by];
  const head = [...groups, ...(groups.includes("key") ? ["key_name", "key_prefix"] : []), ...COUNTS, "cost_usd"];
  const line = (row) => head.map((c) => csvCell(c === "cost_usd" ? formatUsd(row.cost_uc, 2) : row[c])).join(",") + "\r\n";
  return [head.join(",") + "\r\n", ...report.rows.map(line), line({ [groups[0]]: "TOTAL", ...report.total })].join("");
}
