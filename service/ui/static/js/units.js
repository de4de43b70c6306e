// Orderings of a map's units (rows) for the gate view's "sort by" control.

function unitStats(flat, score) {
  const { T, H } = flat;
  const out = new Float64Array(H);
  for (let u = 0; u < H; u++) out[u] = score(u, T, H, flat.values);
  return out;
}

function variance(u, T, H, v) {
  let s = 0;
  let s2 = 0;
  for (let t = 0; t < T; t++) {
    const x = v[t * H + u];
    s += x;
    s2 += x * x;
  }
  const m = s / T;
  return s2 / T - m * m;
}

// Saturated: a gate below 0.1 or above 0.9; a tanh or cell value beyond ±0.9 of its range.
function saturation(gate, top) {
  const unit = ["input", "forget", "output", "reset", "update"].includes(gate);
  return (u, T, H, v) => {
    let n = 0;
    for (let t = 0; t < T; t++) {
      const x = v[t * H + u];
      if (unit ? x < 0.1 || x > 0.9 : Math.abs(x) > 0.9 * top) n++;
    }
    return n / T;
  };
}

// How much the unit moved when it read token `at`: what "tracks this token" means here.
function jump(at) {
  return (u, T, H, v) => {
    if (at <= 0 || at >= T) return at === 0 ? Math.abs(v[u]) : 0;
    return Math.abs(v[at * H + u] - v[(at - 1) * H + u]);
  };
}

export const SORTS = {
  index: "index",
  variance: "variance",
  saturation: "saturation",
  token: "jump at token",
};

export function unitOrder(flat, gate, how, { token = 0, top = 1, limit = 0 } = {}) {
  const H = flat.H;
  let order = Array.from({ length: H }, (_, u) => u);
  if (how !== "index") {
    const score = how === "variance" ? variance : how === "saturation" ? saturation(gate, top) : jump(token);
    const stats = unitStats(flat, score);
    order.sort((a, b) => stats[b] - stats[a] || a - b);
  }
  if (limit > 0 && limit < H) order = order.slice(0, limit);
  return order;
}
