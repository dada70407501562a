// Line charts as SVG, drawn by our own code: no library, nothing fetched. Every label is set with textContent.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceTicks(lo, hi, count, minStep = 0) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = Math.max((hi - lo) / count, minStep);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-12; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function formatTick(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e4 || a < 1e-2)) return v.toExponential(0);
  return String(Number(v.toPrecision(3)));
}

/**
 * lineChart(series, options) -> <svg>
 * series: [{name, points: [[x, y], ...]}]; options: {title, xLabel, yLabel, yMin, yMax, percent, width, height}
 */
function lineChart(series, options) {
  const o = Object.assign({ width: 560, height: 260, xLabel: "round" }, options || {});
  const m = { left: 52, right: 12, top: 26, bottom: 40 };
  const root = svg("svg", { viewBox: `0 0 ${o.width} ${o.height}`, class: "chart", role: "img" });
  root.appendChild(svg("title", {}, o.title || "chart"));
  root.appendChild(svg("text", { x: m.left, y: 16, class: "chart-title" }, o.title || ""));
  const all = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
  if (all.length === 0) {
    root.appendChild(svg("text", { x: o.width / 2, y: o.height / 2, "text-anchor": "middle", class: "chart-empty" },
      "no data yet"));
    return root;
  }
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  let y0 = o.yMin !== undefined ? o.yMin : Math.min(...ys);
  let y1 = o.yMax !== undefined ? o.yMax : Math.max(...ys);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y1 = y0 + (Math.abs(y0) || 1) * 0.1; y0 -= (Math.abs(y0) || 1) * 0.1; }
  const w = o.width - m.left - m.right, h = o.height - m.top - m.bottom;
  const sx = (x) => m.left + ((x - x0) / (x1 - x0)) * w;
  const sy = (y) => m.top + h - ((y - y0) / (y1 - y0)) * h;

  const grid = svg("g", { class: "chart-grid" });
  for (const t of niceTicks(y0, y1, 4)) {
    grid.appendChild(svg("line", { x1: m.left, x2: m.left + w, y1: sy(t), y2: sy(t) }));
    grid.appendChild(svg("text", { x: m.left - 6, y: sy(t) + 4, "text-anchor": "end" },
      o.percent ? `${Math.round(t * 100)} %` : formatTick(t)));
  }
  for (const t of niceTicks(x0, x1, 5, 1)) { // rounds are whole numbers
    grid.appendChild(svg("text", { x: sx(t), y: m.top + h + 16, "text-anchor": "middle" }, formatTick(t)));
  }
  grid.appendChild(svg("text", { x: m.left + w / 2, y: o.height - 4, "text-anchor": "middle" }, o.xLabel));
  root.appendChild(grid);

  series.forEach((s, i) => {
    const pts = s.points.filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
    if (pts.length === 0) return;
    const colour = s.colour || PALETTE[i % PALETTE.length];
    const d = pts.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    const group = svg("g", { class: "chart-series", "data-series": s.name });
    group.appendChild(svg("path", { d, fill: "none", stroke: colour, "stroke-width": 1.8 }));
    if (pts.length < 40) {
      for (const p of pts) group.appendChild(svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: colour }));
    }
    root.appendChild(group);
    const lx = m.left + 8 + (i % 4) * 120, ly = m.top + 10 + Math.floor(i / 4) * 14;
    root.appendChild(svg("rect", { x: lx, y: ly - 8, width: 10, height: 3, fill: colour }));
    root.appendChild(svg("text", { x: lx + 14, y: ly - 4, class: "chart-legend" }, s.name));
  });
  return root;
}

window.lineChart = lineChart;
