// Costs: spend over time stacked by model/provider/key/project/end user/a tag's values, the
// `stockyard costs` table, CSV download.

import { get } from "./api.js";
import { barChart } from "./charts.js";
import { field, h, mount, table } from "./dom.js";
import { costsCsv, dayRange, formatInt, formatUsd, utcDay } from "./format.js";

const GROUPS = ["model", "provider", "key", "project", "user", "tag"];

/** Time buckets [{label, since, until}] for a range: days up to a month, then weeks, then months. */
export function buckets(first, last) {
  const days = dayRange(first, last);
  if (days.length <= 31) return days.map((d) => ({ label: d, since: d, until: d }));
  const out = [];
  const size = days.length <= 120 ? 7 : null;
  for (let i = 0; i < days.length;) {
    let j = size ? Math.min(days.length, i + size) : i + 1;
    if (!size) while (j < days.length && days[j].slice(0, 7) === days[i].slice(0, 7)) j += 1;
    out.push({ label: size ? days[i] : days[i].slice(0, 7), since: days[i], until: days[j - 1] });
    i = j;
  }
  return out;
}

// The chart's series: the groups that cost most over the range, the rest summed into one.
export const CHART_TOP = 10;
// The table's rows, likewise: end-user ids and tag values are the clients' to choose, so a
// report of every group could be as long as a client likes (one id per request).
export const TABLE_TOP = 200;

function groupName(by, row) {
  if (row.other) return "(other)"; // the rest of a top=N report (its name in /api/costs)
  if (by === "key") return row.key_name ? `${row.key_name} (${row.key})` : (row.key || "(none)");
  const name = row[by] || "(none)";
  // A group really named "(other)" must not be summed into the rest's series.
  return name === "(other)" ? `(other) (a ${by})` : name;
}

/** Chart series from a `by=day,<group>` report: each name's cost summed into the time buckets. */
export function bucketSeries(names, spans, dailyRows, group) {
  const bucketOf = new Map();
  spans.forEach((b, i) => dayRange(b.since, b.until).forEach((d) => bucketOf.set(d, i)));
  const values = new Map(names.map((n) => [n, spans.map(() => 0)]));
  for (const row of dailyRows) {
    const line = values.get(groupName(group, row));
    const i = bucketOf.get(row.day);
    if (line && i !== undefined) line[i] += Number(row.cost_uc);
  }
  return names.map((name) => ({ name, values: values.get(name) }));
}

/** The series of a top report, biggest first (the totals' order), then the rest if there is one. */
export function chartNames(ordered, dailyRows, group) {
  const present = new Set(dailyRows.map((r) => groupName(group, r)));
  const kept = ordered.filter((n) => present.has(n) && n !== "(other)");
  return present.has("(other)") ? [...kept, "(other)"] : kept;
}

export async function costs(view) {
  const by = h("select", {}, GROUPS.map((g) => h("option", { value: g }, g)));
  const range = h("select", {}, [7, 30, 90, 365].map((d) => h("option", { value: d, selected: d === 30 }, `last ${d} days`)));
  const tagName = h("input", { name: "tag", size: 12, placeholder: "e.g. team" });
  const tagField = field("tag name", tagName);
  const out = h("div", {});
  const render = async () => {
    tagField.hidden = by.value !== "tag";
    if (by.value === "tag" && !tagName.value.trim()) {
      mount(out, h("p", { class: "muted" }, "Name the tag to group by (from x-stockyard-tags: team=search → team)."));
      return;
    }
    // A tag report groups by the values of one tag: by=tag:NAME, each row keyed "tag:NAME".
    const group = by.value === "tag" ? `tag:${tagName.value.trim()}` : by.value;
    const first = utcDay(Number(range.value) - 1), last = utcDay(0);
    mount(out, h("p", { class: "muted" }, "loading…"));
    const spans = buckets(first, last);
    // Two requests whatever the range: the totals, and (day, group) for the chart — the top
    // groups and the rest per day, not one row per user per day.
    const [report, daily] = await Promise.all([
      get("/api/costs", { by: group, since: first, until: last, top: TABLE_TOP }),
      get("/api/costs", { by: `day,${group}`, since: first, until: last, top: CHART_TOP }),
    ]);
    const series = bucketSeries(chartNames(report.rows.map((r) => groupName(group, r)), daily.rows, group),
      spans, daily.rows, group);
    const csv = costsCsv(report);
    const download = h("a", { href: URL.createObjectURL(new Blob([csv], { type: "text/csv" })),
      download: `stockyard-costs-by-${group}-${first}-to-${last}.csv` }, "Download CSV");
    const rows = [...report.rows.map((r) => ({ ...r, name: groupName(group, r) })), { ...report.total, name: "TOTAL", total: true }];
    mount(out,
      h("h2", {}, `Spend per ${spans.length === dayRange(first, last).length ? "day" : spans[0].label.length === 7 ? "month" : "week"} by ${group}`),
      report.total.requests ? barChart({ labels: spans.map((b) => b.label), series, format: (v) => formatUsd(v) })
        : h("p", { class: "empty" }, "No requests in this range."),
      h("h2", {}, `Totals ${first} to ${last} (UTC)`, group.startsWith("tag:") ? " of the requests carrying the tag" : ""),
      group === "user" || group.startsWith("tag:")
        ? h("p", { class: "muted" }, "Requests Stockyard refused itself (rate limit, budget, bad requests) cost nothing "
          + "and are counted by day, key and project only, under no model.")
        : null,
      table([
        { label: group.toUpperCase(), value: (r) => r.name },
        { label: "REQUESTS", value: (r) => formatInt(r.requests), class: "num" },
        { label: "ERRORS", value: (r) => formatInt(r.errors), class: "num" },
        { label: "TOKENS IN/OUT", value: (r) => `${r.prompt_tokens}/${r.completion_tokens}`, class: "num" },
        { label: "CACHED", value: (r) => formatInt(r.cached_tokens), class: "num" },
        { label: "REASONING", value: (r) => formatInt(r.reasoning_tokens), class: "num" },
        { label: "UNPRICED", value: (r) => formatInt(r.unknown_cost), class: "num" },
        { label: "COST", value: (r) => formatUsd(r.cost_uc, 2), class: "num" },
      ], rows, { rowAttrs: (r) => ({ class: r.total ? "total" : null }) }),
      report.rows.some((r) => r.other)
        ? h("p", { class: "muted" }, `The ${TABLE_TOP} that cost most, the rest summed as (other); `
          + `\`stockyard costs --by ${group} --csv\` lists every one.`)
        : null,
      h("p", {}, download));
  };
  const form = h("form", { class: "inline", onsubmit: (e) => { e.preventDefault(); render(); } },
    field("group by", by), tagField, field("range", range), h("button", { type: "submit" }, "Show"));
  by.addEventListener("change", render);
  range.addEventListener("change", render);
  mount(view, h("h1", {}, "Costs"), form, out);
  await render();
}
