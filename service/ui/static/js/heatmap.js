// Gate heat maps on canvas: one pixel per (token, unit) cell, blown up by CSS, so a
// 512-token x 650-unit map is one putImageData of 333k pixels rather than 333k rects.

// The same ramps as service/ui/render.py, so the page and /gates.png agree.
const SEQUENTIAL = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const DIVERGING = [[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]];
const CELL_QUANTILE = 0.99;
const UNIT_GATES = new Set(["input", "forget", "output", "reset", "update"]);

export function kindOf(gate) {
  if (UNIT_GATES.has(gate)) return "unit";
  return gate === "cell" ? "cell" : "tanh";
}

export const KIND_NOTE = {
  unit: "sigmoid gate, 0 (closed) … 1 (open)",
  tanh: "tanh, −1 … 1",
  cell: "cell state, symmetric around 0 (±99th percentile of |c|; beyond it clipped)",
};

function rgb(stops, x) {
  const pos = x * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(pos));
  const f = pos - i;
  return stops[i].map((c, k) => Math.round(c + (stops[i + 1][k] - c) * f));
}

function lut(stops) {
  const out = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    const [r, g, b] = rgb(stops, i / 255);
    out[i] = (255 << 24) | (b << 16) | (g << 8) | r; // canvas pixels are RGBA in memory
  }
  return out;
}

const LUTS = { unit: lut(SEQUENTIAL), tanh: lut(DIVERGING), cell: lut(DIVERGING) };

export function cssColour(gate, x) {
  const [r, g, b] = rgb(kindOf(gate) === "unit" ? SEQUENTIAL : DIVERGING, Math.min(1, Math.max(0, x)));
  return `rgb(${r},${g},${b})`;
}

// rows: T lists of H numbers (as /gates sends them) -> one flat Float64Array, token-major.
// Float64 keeps each value exactly as the API sent it, so a hover shows the same number.
export function flatten(rows) {
  const T = rows.length;
  const H = T ? rows[0].length : 0;
  const out = new Float64Array(T * H);
  for (let t = 0; t < T; t++) out.set(rows[t], t * H);
  return { values: out, T, H };
}

export function scaleOf(gate, values) {
  const kind = kindOf(gate);
  if (kind === "unit") return [0, 1];
  if (kind === "tanh") return [-1, 1];
  // The 99th percentile of |c|, not the maximum: a few large cells would wash out the rest.
  const abs = Float64Array.from(values, Math.abs).sort();
  const pos = CELL_QUANTILE * (abs.length - 1);
  const i = Math.floor(pos);
  const top = abs.length ? abs[i] + (abs[Math.min(i + 1, abs.length - 1)] - abs[i]) * (pos - i) : 1;
  return top > 1e-6 ? [-top, top] : [-1, 1];
}

// Paint `order` (the unit rows shown, top to bottom) of a flat map into `canvas`.
export function paint(canvas, gate, flat, order, [lo, hi]) {
  const { values, T, H } = flat;
  const rows = order.length;
  canvas.width = T;
  canvas.height = rows;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(T, rows);
  const px = new Uint32Array(image.data.buffer);
  const table = LUTS[kindOf(gate)];
  const k = 255 / (hi - lo);
  for (let r = 0; r < rows; r++) {
    const unit = order[r];
    const base = r * T;
    for (let t = 0; t < T; t++) {
      let i = ((values[t * H + unit] - lo) * k + 0.5) | 0;
      i = i < 0 ? 0 : i > 255 ? 255 : i;
      px[base + t] = table[i];
    }
  }
  ctx.putImageData(image, 0, 0);
}

export function legend(gate, [lo, hi], width = 120) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = 1;
  canvas.className = "legend-ramp";
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(width, 1);
  const px = new Uint32Array(image.data.buffer);
  const table = LUTS[kindOf(gate)];
  for (let x = 0; x < width; x++) px[x] = table[Math.round((x / (width - 1)) * 255)];
  ctx.putImageData(image, 0, 0);
  const wrap = document.createElement("span");
  wrap.className = "legend";
  const fmt = (v) => (Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2));
  wrap.append(fmt(lo), canvas, fmt(hi));
  wrap.title = KIND_NOTE[kindOf(gate)];
  return wrap;
}

// Which cell is under the pointer: the canvas is scaled by whole pixels per cell.
export function cellAt(canvas, event, cw, ch) {
  const box = canvas.getBoundingClientRect();
  const t = Math.floor((event.clientX - box.left - canvas.clientLeft) / cw);
  const r = Math.floor((event.clientY - box.top - canvas.clientTop) / ch);
  if (t < 0 || r < 0 || t >= canvas.width || r >= canvas.height) return null;
  return { t, r };
}

export function cellSize(T, rows, width) {
  const cw = Math.max(1, Math.min(28, Math.floor(width / Math.max(T, 1))));
  const ch = Math.max(1, Math.min(10, Math.floor(320 / Math.max(rows, 1))));
  return [cw, ch];
}
