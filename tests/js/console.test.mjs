// node --test tests/js/console.test.mjs: the console's pure parts and DOM building, against a tiny fake DOM.
import test from "node:test";
import assert from "node:assert/strict";

class Node {
  constructor(tag, ns) { this.tag = tag; this.ns = ns; this.children = []; this.attrs = {}; this.listeners = {}; this.text = null; }
  appendChild(c) { this.children.push(c); return c; }
  removeChild(c) { this.children = this.children.filter((x) => x !== c); }
  get firstChild() { return this.children[0] || null; }
  setAttribute(k, v) { this.attrs[k] = String(v); }
  addEventListener(k, fn) { this.listeners[k] = fn; }
  set textContent(v) { this.children = [new Text(v)]; }
  get textContent() { return this.children.map((c) => c.textContent).join(""); }
  find(tag) { return [this.tag === tag ? [this] : [], ...this.children.map((c) => (c.find ? c.find(tag) : []))].flat(); }
  // What the browser would parse: data must come out escaped.
  get outer() {
    const attrs = Object.entries(this.attrs).map(([k, v]) => ` ${k}="${v.replace(/&/g, "&amp;").replace(/"/g, "&quot;")}"`).join("");
    return `<${this.tag}${attrs}>${this.children.map((c) => c.outer).join("")}</${this.tag}>`;
  }
}
class Text {
  constructor(v) { this.value = String(v); }
  get textContent() { return this.value; }
  get outer() { return this.value.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }
}
globalThis.document = {
  createElement: (t) => new Node(t),
  createElementNS: (ns, t) => new Node(t, ns),
  createTextNode: (v) => new Text(v),
};

const { h, table } = await import("../../stockyard/ui/dom.js");
const fmt = await import("../../stockyard/ui/format.js");
const charts = await import("../../stockyard/ui/charts.js");
const { buckets, bucketSeries, chartNames } = await import("../../stockyard/ui/costs.js");
const { tagText } = await import("../../stockyard/ui/traces.js");

test("money: integer micro-cents to dollars, exact at any size", () => {
  assert.equal(fmt.formatUsd(0), "$0.00");
  assert.equal(fmt.formatUsd(1), "$0.00000001");
  assert.equal(fmt.formatUsd(18400), "$0.000184");
  assert.equal(fmt.formatUsd(1000000000), "$10.00");
  assert.equal(fmt.formatUsd("123456789012345678901"), "$1234567890123.45678901");
  assert.equal(fmt.formatUsd(-150000000), "-$1.50");
  assert.equal(fmt.formatUsd(null), "—");
  assert.equal(fmt.sumUc(["9007199254740993", 1]), 9007199254740994n);
});

test("data renders as text: a script in a body stays text", () => {
  const evil = "<script>alert(1)</script><img src=x onerror=alert(2)>";
  const el = h("div", { title: evil }, evil, h("pre", {}, evil));
  assert.deepEqual([el.find("script").length, el.find("img").length], [0, 0]);
  assert.equal(el.attrs.title, evil); // an attribute value, never parsed as markup
  assert.ok(!h("div", {}, evil).outer.includes("<script>"));
  assert.equal(el.children[0].textContent, evil);
  assert.throws(() => h("a", { onclick: "alert(1)" }));
  assert.throws(() => h("a", { style: "color: red" }));
  const t = table([{ label: "x", value: (r) => r.x }], [{ x: evil }]);
  assert.ok(!t.outer.includes("<img"));
});

test("SSE answers are reassembled", () => {
  const openai = 'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\ndata: {"choices":[{"delta":{"content":"lo <b>"}}],"usage":{"total_tokens":3}}\n\ndata: [DONE]\n';
  assert.deepEqual(fmt.reassembleSse(openai), { text: "Hello <b>", events: 2, usage: { total_tokens: 3 } });
  const anthropic = 'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"type":"text_delta","text":"Hi"}}\n\n';
  assert.equal(fmt.reassembleSse(anthropic).text, "Hi");
  assert.ok(fmt.isSse(openai) && fmt.isSse(anthropic) && !fmt.isSse('{"a":1}'));
  assert.equal(fmt.prettyBody('{"a":[1]}'), '{\n  "a": [\n    1\n  ]\n}');
  assert.equal(fmt.prettyBody("not json"), "not json");
});

test("day ranges", () => {
  assert.equal(fmt.dayRange("2024-02-27", "2024-03-01").length, 4);
  assert.equal(fmt.dayRange("2024-01-01", "2024-12-30").length, 365);
});

test("charts: many series fold into other; labels thin out; hover titles carry numbers", () => {
  const labels = fmt.dayRange("2024-01-01", "2024-12-30");
  const series = Array.from({ length: 30 }, (_, i) => ({ name: `model-${i}`, values: labels.map(() => i + 1) }));
  const top = charts.topSeries(series, 8);
  assert.equal(top.length, 8);
  assert.equal(top[7].name, "other (23)");
  assert.equal(top[7].values[0], (1 + 23) * 23 / 2);
  const fig = charts.barChart({ labels, series, format: String });
  assert.ok(fig.find("text").filter((t) => t.attrs.class === "xlabel").length <= 12);
  const titles = fig.find("title");
  assert.equal(titles.length, 365);
  assert.match(titles[0].textContent, /^2024-01-01 — total 465\nmodel-29: 30/);
  const one = charts.barChart({ labels: ["2024-01-01"], series: [{ name: "spend", values: [18400] }], format: (v) => fmt.formatUsd(v) });
  assert.equal(one.find("title")[0].textContent, "2024-01-01: $0.000184");
  assert.equal(one.find("rect").filter((r) => r.attrs.class.startsWith("bar")).length, 1);
  const line = charts.lineChart({ labels: ["a", "b"], series: [{ name: "x", values: [0, 0] }] });
  assert.equal(line.find("polyline").length, 1);
  const hbar = charts.hbarChart({ items: Array.from({ length: 30 }, (_, i) => ({ label: `k${i}`, value: i })), max: 10 });
  assert.equal(hbar.find("title").length, 10);
  assert.equal(charts.niceMax(0), 1);
  assert.equal(charts.niceMax(430), 600);
  assert.equal(charts.niceMax(8), 8);
  assert.equal(charts.niceMax(3), 3);
});

test("cost buckets: days up to a month, then weeks, then months", () => {
  assert.equal(buckets("2024-01-01", "2024-01-01").length, 1);
  assert.equal(buckets("2024-01-01", "2024-01-30").length, 30);
  assert.equal(buckets("2024-01-01", "2024-03-30").length, 13);
  const months = buckets("2024-01-01", "2024-12-30");
  assert.equal(months.length, 12);
  assert.deepEqual(months[1], { label: "2024-02", since: "2024-02-01", until: "2024-02-29" });
});

test("chart series come from one by=day,<group> report summed into the buckets", () => {
  const spans = buckets("2024-01-01", "2024-03-30");  // weeks
  const rows = [
    { day: "2024-01-01", model: "a", cost_uc: 5 }, { day: "2024-01-07", model: "a", cost_uc: 7 },
    { day: "2024-01-08", model: "b", cost_uc: 11 }, { day: "2024-03-30", model: null, cost_uc: 2 },
  ];
  const series = bucketSeries(["a", "b", "(none)"], spans, rows, "model");
  assert.deepEqual(series[0].values.slice(0, 2), [12, 0]);
  assert.deepEqual(series[1].values.slice(0, 2), [0, 11]);
  assert.equal(series[2].values[spans.length - 1], 2);
  assert.equal(series.flatMap((s) => s.values).reduce((a, b) => a + b), 25);
});

test("a top=N chart: the kept groups in the totals' order, then the rest as one series", () => {
  const spans = [{ label: "d", since: "2026-01-01", until: "2026-01-02" }];
  const rows = [
    { day: "2026-01-01", user: "ana", other: false, cost_uc: 5 },
    { day: "2026-01-01", user: "(other)", other: true, cost_uc: 3 },
    { day: "2026-01-02", user: "bo", other: false, cost_uc: 4 },
    { day: "2026-01-02", user: "(other)", other: true, cost_uc: 1 },
  ];
  const names = chartNames(["bo", "ana", "cy", "dee"], rows, "user");
  assert.deepEqual(names, ["bo", "ana", "(other)"]);
  assert.deepEqual(bucketSeries(names, spans, rows, "user").map((s) => s.values[0]), [4, 5, 4]);
  assert.deepEqual(chartNames(["ana"], rows.slice(0, 1), "user"), ["ana"], "no rest, no (other) series");
  // A user really named "(other)" keeps a series of its own, apart from the rest's.
  const named = [...rows, { day: "2026-01-02", user: "(other)", other: false, cost_uc: 7 }];
  const both = chartNames(["(other) (a user)", "bo"], named, "user");
  assert.deepEqual(both, ["(other) (a user)", "bo", "(other)"]);
  assert.deepEqual(bucketSeries(both, spans, named, "user").map((s) => s.values[0]), [7, 4, 4]);
});

test("CSV cells that a spreadsheet would run as a formula start with a quote", () => {
  for (const bad of ["=HYPERLINK(\"http://x\")", "+1", "-1+2", "@SUM(A1)", "\tx", "\rx"]) {
    assert.ok(fmt.csvCell(bad).replace(/^"/, "").startsWith("'"), bad);
  }
  assert.equal(fmt.csvCell("gpt-4o"), "gpt-4o");
  assert.equal(fmt.csvCell(-5), "-5");  // numbers are numbers
  const report = { by: "project", rows: [{ project: "=1+2", requests: 1, cost_uc: 0 }], total: { requests: 1, cost_uc: 0 } };
  assert.ok(fmt.costsCsv(report).split("\r\n")[1].startsWith("'=1+2,1,"));
});

test("CSV has the columns and TOTAL row of `stockyard costs --csv`", () => {
  const report = { by: "model", rows: [{ model: 'a,"b"', requests: 1, errors: 0, prompt_tokens: 2, completion_tokens: 3,
    cached_tokens: 0, cache_write_tokens: 0, reasoning_tokens: 0, unknown_cost: 0, cost_uc: 480 }],
  total: { requests: 1, errors: 0, prompt_tokens: 2, completion_tokens: 3, cached_tokens: 0, cache_write_tokens: 0,
    reasoning_tokens: 0, unknown_cost: 0, cost_uc: 480 } };
  assert.equal(fmt.costsCsv(report),
    "model,requests,errors,prompt_tokens,completion_tokens,cached_tokens,cache_write_tokens,reasoning_tokens,unknown_cost,cost_uc,cost_usd\r\n"
    + '"a,""b""",1,0,2,3,0,0,0,0,480,$0.0000048\r\nTOTAL,1,0,2,3,0,0,0,0,480,$0.0000048\r\n');
});

test("a trace's tags read as name=value pairs; a tag report's rows are named by their value", () => {
  assert.equal(tagText('{"feature": "summaries", "team": "search"}'), "feature=summaries, team=search");
  assert.equal(tagText(null), "");
  assert.equal(tagText("not json"), "not json");
  const series = bucketSeries(["search", "(none)"], [{ label: "d", since: "2026-01-01", until: "2026-01-01" }],
    [{ day: "2026-01-01", "tag:team": "search", cost_uc: 7 }, { day: "2026-01-01", "tag:team": null, cost_uc: 2 }], "tag:team");
  assert.deepEqual(series, [{ name: "search", values: [7] }, { name: "(none)", values: [2] }]);
});
