// A small SVG line chart: one <path class="trial-line"> per series, drawn by hand so the
// dashboard needs nothing from the internet.

import { h } from "./api.js";

const WIDTH = 640;
const HEIGHT = 300;
const MARGIN = { left: 58, right: 16, top: 14, bottom: 40 };
export const PALETTE = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
  "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79",
];

export function colorFor(index) {
  return PALETTE[index % PALETTE.length];
}

/** Round tick values from at or below `lo` to at or above `hi`, about `count` of them. */
export function niceTicks(lo, hi, count = 5) {
  if (!(hi > lo)) hi = lo + 1;
  const raw = (hi - lo) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const first = Math.floor(lo / step + 1e-9);
  const last = Math.ceil(hi / step - 1e-9);
  const ticks = [];
  for (let i = first; i <= last; i++) ticks.push(Number((i * step).toFixed(10)));
  return ticks;
}

/**
 * series: [{id, label, className, color, points: [[epoch, value], ...]}]; drawn in order, so put
 * the series to emphasise last. options: {yLabel, yFormat, yMin, yMax, xMax}.
 */
export function drawLineChart(svg, series, options) {
  svg.replaceChildren();
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1])).filter(Number.isFinite);
  if (!ys.length) {
    svg.append(h("text", { x: WIDTH / 2, y: HEIGHT / 2, class: "chart-empty", "text-anchor": "middle" }, "no epochs yet"));
    return;
  }
  const xMax = Math.max(options.xMax || 1, ...xs);
  const [yLo, yHi] = yRange(ys, options);
  const x = (v) => MARGIN.left + ((v - 1) / Math.max(xMax - 1, 1)) * (WIDTH - MARGIN.left - MARGIN.right);
  const y = (v) => HEIGHT - MARGIN.bottom - ((v - yLo) / (yHi - yLo)) * (HEIGHT - MARGIN.top - MARGIN.bottom);

  svg.append(axes(x, y, xMax, yLo, yHi, options));
  const lines = h("g", { class: "lines" });
  for (const s of series) {
    if (!s.points.length) continue;
    let d = s.points.map(([ex, ey], i) => `${i ? "L" : "M"}${x(ex).toFixed(1)},${y(ey).toFixed(1)}`).join("");
    if (s.points.length === 1) d += "h3m-6,0h3"; // a lone first epoch: a short dash, not an invisible point
    lines.append(
      h(
        "path",
        { d, class: `trial-line ${s.className || ""}`.trim(), stroke: s.color, dataset: { trialId: s.id } },
        h("title", {}, s.label),
      ),
    );
  }
  svg.append(lines);
}

function yRange(ys, options) {
  let lo = options.yMin ?? Math.min(...ys);
  let hi = options.yMax ?? Math.max(...ys);
  if (hi - lo < 1e-6) {
    lo -= 0.05;
    hi += 0.05;
  }
  const ticks = niceTicks(lo, hi);
  const [min, max] = options.clamp || [-Infinity, Infinity];
  return [Math.max(ticks[0], min), Math.min(ticks[ticks.length - 1], max)];
}

function axes(x, y, xMax, yLo, yHi, options) {
  const g = h("g", { class: "axes" });
  const left = MARGIN.left;
  const right = WIDTH - MARGIN.right;
  const bottom = HEIGHT - MARGIN.bottom;
  for (const v of niceTicks(yLo, yHi)) {
    if (v < yLo - 1e-9 || v > yHi + 1e-9) continue;
    g.append(h("line", { x1: left, x2: right, y1: y(v), y2: y(v), class: "grid" }));
    g.append(h("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, options.yFormat(v)));
  }
  const xStep = Math.max(1, Math.ceil(xMax / 10));
  for (let e = 1; e <= xMax; e += xStep) {
    g.append(h("line", { x1: x(e), x2: x(e), y1: bottom, y2: bottom + 4, class: "tick" }));
    g.append(h("text", { x: x(e), y: bottom + 17, "text-anchor": "middle" }, String(e)));
  }
  g.append(h("line", { x1: left, x2: right, y1: bottom, y2: bottom, class: "axis" }));
  g.append(h("line", { x1: left, x2: left, y1: MARGIN.top, y2: bottom, class: "axis" }));
  g.append(h("text", { x: (left + right) / 2, y: HEIGHT - 4, "text-anchor": "middle", class: "label" }, "epoch"));
  g.append(
    h(
      "text",
      { x: 14, y: (MARGIN.top + bottom) / 2, "text-anchor": "middle", class: "label", transform: `rotate(-90 14 ${(MARGIN.top + bottom) / 2})` },
      options.yLabel,
    ),
  );
  return g;
}
