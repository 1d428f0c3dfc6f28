// Validation accuracy of each point with its 95 % interval, as horizontal error bars: a dot at
// the (mean) accuracy, a bar over the interval. The best point is drawn bold; the points whose
// interval overlaps the best's (`tied_with_best`) are the tie group, shaded behind the bars.

import { h } from "./api.js";

const WIDTH = 640;
const ROW = 22;
const MARGIN = { left: 150, right: 20, top: 10, bottom: 34 };
export const MAX_ROWS = 20;

const pctText = (v) => `${(v * 100).toFixed(1)} %`;

/** points: GET /jobs/{id} `points`; bestPoint: `best.point`. Returns how many rows were drawn. */
export function drawIntervals(svg, points, bestPoint, label) {
  const rows = points
    .filter((p) => p.val_interval)
    .sort((a, b) => b.val_mean - a.val_mean || a.point - b.point)
    .slice(0, MAX_ROWS);
  const height = MARGIN.top + MARGIN.bottom + Math.max(rows.length, 1) * ROW;
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${height}`);
  svg.replaceChildren();
  if (!rows.length) {
    svg.append(h("text", { x: WIDTH / 2, y: height / 2, class: "chart-empty", "text-anchor": "middle" }, "no accuracies yet"));
    return 0;
  }
  const lo = Math.max(0, Math.min(...rows.map((p) => p.val_interval[0])) - 0.01);
  const hi = Math.min(1, Math.max(...rows.map((p) => p.val_interval[1])) + 0.01);
  const x = (v) => MARGIN.left + ((v - lo) / (hi - lo)) * (WIDTH - MARGIN.left - MARGIN.right);
  const y = (i) => MARGIN.top + i * ROW + ROW / 2;
  const g = h("g", { class: "intervals" });
  const tied = rows.map((p, i) => [p, i]).filter(([p]) => p.tied_with_best);
  if (tied.length) {
    const top = Math.min(...tied.map(([, i]) => i));
    const bottom = Math.max(...tied.map(([, i]) => i));
    g.append(h("rect", { x: MARGIN.left, y: y(top) - ROW / 2, width: WIDTH - MARGIN.left - MARGIN.right, height: (bottom - top + 1) * ROW, class: "tie-band" }));
  }
  const best = rows.find((p) => p.point === bestPoint);
  if (best) g.append(h("line", { x1: x(best.val_interval[0]), x2: x(best.val_interval[0]), y1: MARGIN.top, y2: height - MARGIN.bottom, class: "tie-edge" }));
  rows.forEach((p, i) => {
    const cls = ["interval", p.point === bestPoint && "best", p.tied_with_best && "tied"].filter(Boolean).join(" ");
    const spread = p.val_std == null ? "" : ` ± ${pctText(p.val_std)} (sd over ${p.succeeded} runs)`;
    const row = h(
      "g",
      { class: cls, dataset: { point: p.point } },
      h("title", {}, `${label(p)}: ${pctText(p.val_mean)}${spread}, 95 % ${pctText(p.val_interval[0])} – ${pctText(p.val_interval[1])}`),
      h("text", { x: MARGIN.left - 8, y: y(i) + 4, "text-anchor": "end" }, label(p)),
      h("line", { x1: x(p.val_interval[0]), x2: x(p.val_interval[1]), y1: y(i), y2: y(i), class: "bar" }),
      h("circle", { cx: x(p.val_mean), cy: y(i), r: 4 }),
    );
    g.append(row);
  });
  const axisY = height - MARGIN.bottom;
  g.append(h("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: axisY, y2: axisY, class: "axis" }));
  for (const t of [lo, (lo + hi) / 2, hi]) {
    g.append(h("text", { x: x(t), y: axisY + 16, "text-anchor": "middle" }, pctText(t)));
  }
  g.append(h("text", { x: (MARGIN.left + WIDTH) / 2, y: height - 2, "text-anchor": "middle", class: "label" }, "validation accuracy, 95 % interval"));
  svg.append(g);
  return rows.length;
}
