// Bar and line charts as SVG: a few hundred points at most, so no canvas needed here.
import { fmt, svg } from "./dom.js";

export const SERIES_COLOURS = {
  rnn: "#d95f02",
  lstm: "#1b9e77",
  gru: "#7570b3",
};
const FALLBACK = ["#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666", "#1f78b4"];

export function colourFor(name, index = 0) {
  const arch = String(name).split("@")[0];
  return SERIES_COLOURS[arch] || FALLBACK[index % FALLBACK.length];
}

// Horizontal bars: one row per item, the value written after the bar.
export function barChart(items, { width = 300, row = 20, max = null, label = "" } = {}) {
  const labelW = 96;
  const top = max ?? Math.max(1e-9, ...items.map((d) => d.value));
  const barW = width - labelW - 52;
  const chart = svg("svg", {
    width,
    height: items.length * row + 4,
    class: "bars",
    role: "img",
    "aria-label": label,
  });
  items.forEach((d, i) => {
    const y = i * row + 2;
    const w = Math.max(1, (d.value / top) * barW);
    chart.append(
      svg("text", { x: labelW - 6, y: y + row * 0.68, "text-anchor": "end", class: "bar-label", text: d.label }),
      svg("rect", { x: labelW, y: y + 3, width: w, height: row - 6, fill: d.colour || "#4c78a8", rx: 2 }),
      svg("text", { x: labelW + w + 4, y: y + row * 0.68, class: "bar-value", text: fmt(d.value, 3) }),
    );
  });
  return chart;
}

function ticks(lo, hi, n = 5) {
  if (hi <= lo) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toFixed(10));
  return out;
}

// series: [{name, colour, points: [[x, y], ...]}]; xLabels: optional names for integer x.
export function lineChart(series, opts = {}) {
  const { width = 560, height = 260, xLabel = "", yLabel = "", xLabels = null, log = false } = opts;
  const pad = { l: 56, r: 110, t: 12, b: xLabels ? 64 : 40 };
  const pts = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p[1]));
  const tf = (y) => (log ? Math.log10(Math.max(y, 1e-12)) : y);
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => tf(p[1]));
  let [x0, x1] = [Math.min(...xs, 0), Math.max(...xs, 1)];
  let y0 = opts.yMin ?? (ys.length ? Math.min(...ys) : 0);
  let y1 = opts.yMax ?? (ys.length ? Math.max(...ys) : 1);
  if (y1 - y0 < 1e-9) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  if (x1 === x0) x1 = x0 + 1;
  const W = width - pad.l - pad.r;
  const H = height - pad.t - pad.b;
  const sx = (x) => pad.l + ((x - x0) / (x1 - x0)) * W;
  const sy = (y) => pad.t + H - ((tf(y) - y0) / (y1 - y0)) * H;
  const chart = svg("svg", { width, height, class: "lines", role: "img", "aria-label": yLabel });
  const axis = svg("g", { class: "axis" });
  for (const v of ticks(y0, y1)) {
    const y = pad.t + H - ((v - y0) / (y1 - y0)) * H;
    axis.append(
      svg("line", { x1: pad.l, x2: pad.l + W, y1: y, y2: y, class: "grid" }),
      svg("text", { x: pad.l - 6, y: y + 4, "text-anchor": "end", text: log ? fmt(10 ** v, 1) : fmt(v, 2) }),
    );
  }
  if (xLabels) {
    xLabels.forEach((name, i) => {
      const x = sx(i);
      axis.append(
        svg("text", {
          x,
          y: pad.t + H + 8,
          "text-anchor": "end",
          transform: `rotate(-55 ${x} ${pad.t + H + 8})`,
          class: "tick-token",
          text: name,
        }),
      );
    });
  } else {
    const whole = xs.every(Number.isInteger); // epochs, steps: no tick between two of them
    for (const v of ticks(x0, x1, 6)) {
      if (whole && !Number.isInteger(v)) continue;
      const label = fmt(v, whole ? 0 : 1);
      axis.append(svg("text", { x: sx(v), y: pad.t + H + 16, "text-anchor": "middle", text: label }));
    }
  }
  axis.append(
    svg("line", { x1: pad.l, x2: pad.l, y1: pad.t, y2: pad.t + H, class: "frame" }),
    svg("line", { x1: pad.l, x2: pad.l + W, y1: pad.t + H, y2: pad.t + H, class: "frame" }),
    svg("text", { x: pad.l + W / 2, y: height - 4, "text-anchor": "middle", class: "axis-title", text: xLabel }),
    svg("text", {
      x: 12,
      y: pad.t + H / 2,
      "text-anchor": "middle",
      transform: `rotate(-90 12 ${pad.t + H / 2})`,
      class: "axis-title",
      text: yLabel,
    }),
  );
  chart.append(axis);
  series.forEach((s, i) => {
    const colour = s.colour || colourFor(s.name, i);
    const good = s.points.filter((p) => Number.isFinite(p[1]));
    if (!good.length) return;
    const d = good.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    chart.append(svg("path", { d, fill: "none", stroke: colour, "stroke-width": 2, class: "series" }));
    if (good.length <= 40) {
      for (const p of good) chart.append(svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: colour }));
    }
    const ly = pad.t + 14 + i * 16;
    chart.append(
      svg("rect", { x: pad.l + W + 10, y: ly - 9, width: 12, height: 3, fill: colour }),
      svg("text", { x: pad.l + W + 26, y: ly - 4, class: "legend", text: s.name }),
    );
  });
  return chart;
}
