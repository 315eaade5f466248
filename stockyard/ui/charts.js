// Small SVG charts shared by every page: stacked bars over time, lines, horizontal bars.
// Values are plain numbers (money as integer µ¢, exact below 2^53); `format` turns a value into
// the text shown on hover (an SVG <title>) and on the axis. Colours come from CSS classes c0…c9.

import { h, s } from "./dom.js";

export const MAX_SERIES = 8;
const W = 1200, H = 240, HBAR_W = 600, PAD = { left: 70, right: 10, top: 10, bottom: 26 };

/** Keep the biggest max-1 series (by total) and fold the rest into one "other" series. */
export function topSeries(series, max = MAX_SERIES) {
  const total = (x) => x.values.reduce((a, b) => a + b, 0);
  const sorted = [...series].sort((a, b) => total(b) - total(a) || String(a.name).localeCompare(String(b.name)));
  if (sorted.length <= max) return sorted;
  const kept = sorted.slice(0, max - 1);
  const rest = sorted.slice(max - 1);
  const values = rest[0].values.map((_, i) => rest.reduce((a, x) => a + x.values[i], 0));
  return [...kept, { name: `other (${rest.length})`, values, other: true }];
}

/** Show every step-th x label so that at most maxLabels appear. */
export function labelStep(count, maxLabels = 12) {
  return Math.max(1, Math.ceil(count / maxLabels));
}

/** A round tick step (1, 2 or 5 × 10^k, at least 1) giving about four steps up to v. */
export function tickStep(v) {
  if (!(v > 4)) return 1;
  const raw = v / 4, p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;
  return 10 * p;
}

/** The axis top: the first multiple of the tick step at or above v. */
export function niceMax(v) {
  const step = tickStep(v);
  return Math.max(step, Math.ceil(v / step) * step);
}

function colour(x, i) {
  return x.other ? "c-other" : `c${i % 10}`;
}

function frame(labels, max, format, children) {
  const plotW = W - PAD.left - PAD.right, plotH = H - PAD.top - PAD.bottom;
  const step = tickStep(max);
  const ticks = Array.from({ length: Math.round(max / step) + 1 }, (_, i) => i * step);
  const every = labelStep(labels.length);
  const slot = plotW / Math.max(1, labels.length);
  return s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img" },
    ticks.map((t) => {
      const y = PAD.top + plotH - (t / max) * plotH;
      return s("g", { class: "tick" },
        s("line", { x1: PAD.left, x2: W - PAD.right, y1: y, y2: y }),
        s("text", { x: PAD.left - 6, y: y + 4, "text-anchor": "end" }, format(t)));
    }),
    labels.map((label, i) => (i % every === 0
      ? s("text", { class: "xlabel", x: PAD.left + slot * (i + 0.5), y: H - 8, "text-anchor": "middle" }, label)
      : null)),
    children({ plotW, plotH, slot, y: (v) => PAD.top + plotH - (v / max) * plotH }));
}

function hoverColumns(labels, series, format, slot, plotH) {
  return labels.map((label, i) => {
    const total = series.reduce((a, x) => a + x.values[i], 0);
    const lines = [label + (series.length > 1 ? ` — total ${format(total)}` : `: ${format(total)}`)];
    if (series.length > 1) for (const x of series) if (x.values[i]) lines.push(`${x.name}: ${format(x.values[i])}`);
    return s("rect", { class: "hover", x: PAD.left + slot * i, y: PAD.top, width: slot, height: plotH },
      s("title", {}, lines.join("\n")));
  });
}

export function legend(series) {
  if (series.length < 2) return null;
  return h("ul", { class: "legend" }, series.map((x, i) =>
    h("li", {}, h("span", { class: `swatch ${colour(x, i)}` }), String(x.name))));
}

/** Stacked bars over time. series: [{name, values: number[]}] aligned with labels. */
export function barChart({ labels, series, format = String, maxSeries = MAX_SERIES }) {
  const shown = topSeries(series, maxSeries);
  const totals = labels.map((_, i) => shown.reduce((a, x) => a + x.values[i], 0));
  const max = niceMax(Math.max(0, ...totals));
  const svg = frame(labels, max, format, ({ plotH, slot, y }) => {
    const gap = slot > 6 ? slot * 0.15 : 0;
    const bars = [];
    labels.forEach((_, i) => {
      let base = 0;
      shown.forEach((x, k) => {
        const v = x.values[i];
        if (!v) return;
        bars.push(s("rect", { class: `bar ${colour(x, k)}`, x: PAD.left + slot * i + gap / 2, y: y(base + v),
          width: Math.max(0.5, slot - gap), height: Math.max(0.5, y(base) - y(base + v)) }));
        base += v;
      });
    });
    return [bars, hoverColumns(labels, shown, format, slot, plotH)];
  });
  return h("figure", { class: "chart-box" }, svg, legend(shown));
}

/** Lines over time, same inputs as barChart. */
export function lineChart({ labels, series, format = String, maxSeries = MAX_SERIES }) {
  const shown = topSeries(series, maxSeries);
  const max = niceMax(Math.max(0, ...shown.flatMap((x) => x.values)));
  const svg = frame(labels, max, format, ({ plotH, slot, y }) => [
    shown.map((x, k) => s("polyline", { class: `line ${colour(x, k)}`, fill: "none",
      points: x.values.map((v, i) => `${(PAD.left + slot * (i + 0.5)).toFixed(1)},${y(v).toFixed(1)}`).join(" ") })),
    hoverColumns(labels, shown, format, slot, plotH),
  ]);
  return h("figure", { class: "chart-box" }, svg, legend(shown));
}

/** Horizontal bars for a ranking: items [{label, value}], biggest first, beyond max folded into "other". */
export function hbarChart({ items, format = String, max = 10 }) {
  let rows = [...items].sort((a, b) => b.value - a.value);
  if (rows.length > max) {
    const rest = rows.slice(max - 1);
    rows = [...rows.slice(0, max - 1), { label: `other (${rest.length})`, value: rest.reduce((a, r) => a + r.value, 0) }];
  }
  const top = Math.max(1, ...rows.map((r) => r.value));
  const rowH = 22, labelW = 180, valueW = 110, barW = HBAR_W - labelW - valueW;
  return h("figure", { class: "chart-box" }, s("svg", { viewBox: `0 0 ${HBAR_W} ${rows.length * rowH + 4}`, class: "chart", role: "img" },
    rows.map((r, i) => {
      const label = r.label.length > 26 ? r.label.slice(0, 25) + "…" : r.label;
      return s("g", {},
        s("text", { x: labelW - 8, y: i * rowH + 15, "text-anchor": "end" }, label),
        s("rect", { class: `bar c${i % 10}`, x: labelW, y: i * rowH + 3, height: rowH - 6,
          width: Math.max(1, (r.value / top) * barW) }),
        s("text", { x: HBAR_W - 4, y: i * rowH + 15, "text-anchor": "end" }, format(r.value)),
        s("rect", { class: "hover", x: 0, y: i * rowH, width: HBAR_W, height: rowH },
          s("title", {}, `${r.label}: ${format(r.value)}`)));
    })));
}
