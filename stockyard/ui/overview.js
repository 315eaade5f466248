// Overview: traffic and errors per day, spend today / this month against budgets, latency, top models and keys.

import { get } from "./api.js";
import { barChart, hbarChart } from "./charts.js";
import { h, mount, table } from "./dom.js";
import { dayRange, formatInt, formatLatency, formatUsd, monthStart, utcDay } from "./format.js";

const DAYS = 30;

export function emptyState() {
  const base = `${location.origin}/v1`;
  return h("div", { class: "empty" },
    h("p", {}, "No traffic yet — point your SDK at ", h("code", {}, base), "."),
    h("pre", {}, `from openai import OpenAI\nclient = OpenAI(base_url="${base}", api_key="sk-sy-…")`));
}

function budgetRow(name, item) {
  const over = item.budget_uc && BigInt(item.spend_uc || 0) >= BigInt(item.budget_uc);
  return [name, item.budget_period || "—", formatUsd(item.spend_uc), item.budget_uc ? formatUsd(item.budget_uc) : "no budget",
    item.budget_uc ? h("progress", { max: Number(item.budget_uc), value: Math.min(Number(item.spend_uc || 0), Number(item.budget_uc)),
      class: over ? "over" : null, title: over ? "over budget" : null }) : ""];
}

export async function overview(view) {
  const since = utcDay(DAYS - 1), today = utcDay(0);
  const [days, month, byModel, byKey, lat, keyList, projectList] = await Promise.all([
    get("/api/costs", { by: "day", since, until: today }),
    get("/api/costs", { by: "day", since: monthStart(), until: today }),
    get("/api/costs", { by: "model", since, until: today }),
    get("/api/costs", { by: "key", since, until: today }),
    get("/api/latency"),
    get("/api/keys", { live: "true" }),
    get("/api/projects"),
  ]);
  const labels = dayRange(since, today);
  const perDay = Object.fromEntries(days.rows.map((r) => [r.day, r]));
  const pick = (field) => labels.map((d) => (perDay[d] ? perDay[d][field] : 0));
  const todayRow = perDay[today];
  const budgets = [
    ...projectList.projects.filter((p) => p.budget_uc).map((p) => budgetRow(`project ${p.project}`, p)),
    ...keyList.keys.filter((k) => k.budget_uc).map((k) => budgetRow(`key ${k.name}`, k)),
  ];
  mount(view,
    h("h1", {}, "Overview"),
    days.total.requests === 0 ? emptyState() : null,
    h("div", { class: "grid" },
      h("div", { class: "card" }, h("div", { class: "muted" }, "Spend today (UTC)"),
        h("div", { class: "stat" }, formatUsd(todayRow ? todayRow.cost_uc : 0)),
        h("small", {}, `${formatInt(todayRow ? todayRow.requests : 0)} requests, ${formatInt(todayRow ? todayRow.errors : 0)} errors`)),
      h("div", { class: "card" }, h("div", { class: "muted" }, "Spend this month"),
        h("div", { class: "stat" }, formatUsd(month.total.cost_uc)),
        h("small", {}, `${formatInt(month.total.requests)} requests since ${monthStart()}`)),
      h("div", { class: "card" }, h("div", { class: "muted" }, `Latency, last 24 hours (${formatInt(lat.requests)} answered)`),
        h("div", { class: "stat" }, `p50 ${formatLatency(lat.p50_us)}`),
        h("small", {}, `p90 ${formatLatency(lat.p90_us)} · p99 ${formatLatency(lat.p99_us)}`))),
    h("h2", {}, `Requests and errors per day, last ${DAYS} days`),
    barChart({ labels, format: formatInt, series: [
      { name: "ok", values: labels.map((_, i) => pick("requests")[i] - pick("errors")[i]) },
      { name: "errors", values: pick("errors") },
    ] }),
    h("h2", {}, "Spend per day"),
    barChart({ labels, format: (v) => formatUsd(v), series: [{ name: "spend", values: pick("cost_uc") }] }),
    h("h2", {}, "Budgets"),
    table([
      { label: "who", value: (r) => r[0] }, { label: "period", value: (r) => r[1] },
      { label: "spend", value: (r) => r[2], class: "num" }, { label: "budget", value: (r) => r[3], class: "num" },
      { label: "", value: (r) => r[4] },
    ], budgets, { empty: "No budgets set. Set one on a key (Keys page) or a project." }),
    h("div", { class: "grid" },
      h("section", {}, h("h2", {}, `Top models by spend, last ${DAYS} days`),
        byModel.rows.length ? hbarChart({ format: (v) => formatUsd(v),
          items: byModel.rows.map((r) => ({ label: r.model || "(none)", value: r.cost_uc })) }) : h("p", { class: "empty" }, "No requests yet.")),
      h("section", {}, h("h2", {}, `Top keys by spend, last ${DAYS} days`),
        byKey.rows.length ? hbarChart({ format: (v) => formatUsd(v),
          items: byKey.rows.map((r) => ({ label: r.key_name || r.key || "(no key)", value: r.cost_uc })) }) : h("p", { class: "empty" }, "No requests yet."))));
}
