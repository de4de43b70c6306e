// The gate view: per-gate heat maps of one layer, one or two models side by side.
import * as api from "./api.js";
import { lineChart } from "./charts.js";
import { debounce, el, fmt, svg } from "./dom.js";
import { cellAt, cellSize, flatten, legend, paint, scaleOf } from "./heatmap.js";
import { SORTS, unitOrder } from "./units.js";
import { modelPicker } from "./picker.js";

export const DEFAULT_TEXT = "i grew up in france . the clouds are in the sky . i speak fluent";
// Large maps are fetched rounded to 4 decimals (a third of the bytes); smaller ones exactly,
// so a hover shows the very value /gates computed.
const ROUND = 4;
const EXACT_UP_TO = 300_000; // values in one answer

function roundingFor(model, text, units) {
  if (!model) return ROUND;
  const words = text.trim().split(/\s+/).length; // about the token count; errs either way a bit
  const gates = { lstm: 6, gru: 4, rnn: 1 }[model.arch] || 6;
  return words * (units || model.hidden_size) * gates > EXACT_UP_TO ? ROUND : null;
}

function tokenStrip(tokens, unknown, cw) {
  const unk = new Set(unknown);
  const strip = svg("svg", { width: tokens.length * cw, height: 64, class: "token-strip" });
  tokens.forEach((tok, t) => {
    const x = t * cw + cw / 2;
    strip.append(
      svg("text", {
        x,
        y: 60,
        transform: `rotate(-60 ${x} 60)`,
        class: unk.has(tok) ? "unk" : "",
        text: tok,
      }),
    );
  });
  return strip;
}

function saturationChart(summary) {
  const rows = Object.entries(summary.gates).map(([gate, s]) => ({ gate, ...s }));
  const width = 300;
  const chart = svg("svg", { width, height: rows.length * 18 + 18, class: "saturation" });
  const x0 = 70;
  const W = width - x0 - 10;
  rows.forEach((r, i) => {
    const y = i * 18 + 2;
    const lo = r.frac_below_0_1 * W;
    const hi = r.frac_above_0_9 * W;
    chart.append(
      svg("text", { x: x0 - 6, y: y + 12, "text-anchor": "end", class: "bar-label", text: r.gate }),
      svg("rect", { x: x0, y, width: W, height: 14, fill: "#eee" }),
      svg("rect", { x: x0, y, width: lo, height: 14, fill: "#3b528b" }),
      svg("rect", { x: x0 + W - hi, y, width: hi, height: 14, fill: "#fde725" }),
      svg("title", {
        text: `${r.gate}: ${fmt(r.frac_below_0_1 * 100, 1)}% < 0.1, ${fmt(r.frac_above_0_9 * 100, 1)}% > 0.9, mean ${fmt(r.mean)}`,
      }),
    );
  });
  const y = rows.length * 18 + 14;
  chart.append(
    svg("rect", { x: x0, y: y - 9, width: 10, height: 10, fill: "#3b528b" }),
    svg("text", { x: x0 + 14, y, class: "legend", text: "share < 0.1" }),
    svg("rect", { x: x0 + 100, y: y - 9, width: 10, height: 10, fill: "#fde725" }),
    svg("text", { x: x0 + 114, y, class: "legend", text: "share > 0.9" }),
  );
  return chart;
}

export function mount(root) {
  const text = el("textarea", { rows: 2, id: "gates-text", spellcheck: "false" }, DEFAULT_TEXT);
  const pickA = modelPicker("lstm", { id: "gates-model" });
  const pickB = modelPicker("", { id: "gates-compare", none: "— none —" });
  const layer = el("select", { id: "gates-layer" }, el("option", { value: "0" }, "0"));
  const sortBy = el("select", { id: "gates-sort" }, Object.entries(SORTS).map(([k, v]) => el("option", { value: k }, v)));
  const sortGate = el("select", { id: "gates-sort-gate" });
  const sortToken = el("select", { id: "gates-sort-token" });
  const limit = el(
    "select",
    { id: "gates-limit" },
    [0, 256, 128, 64, 32, 16].map((n) => el("option", { value: n }, n ? `top ${n}` : "all")),
  );
  const links = el("span", { class: "picture-links" });
  const error = el("div", { class: "error", role: "alert", hidden: true, id: "gates-error" });
  const status = el("span", { class: "status", id: "gates-status" });
  const columns = el("div", { class: "gate-columns", id: "gate-columns" });
  const unitBox = el("div", { class: "unit-chart", id: "unit-chart" }, el("p", { class: "hint" }, "Click a row of a heat map to follow that unit over the tokens."));
  const tooltip = document.getElementById("tooltip");

  root.append(
    el("h2", {}, "Gates, per token"),
    el("p", { class: "hint" }, "Tokens run across, units down; one map per gate of the chosen layer. Hover a cell for its exact value; sort the units, or click one for its line chart."),
    el("div", { class: "controls" },
      el("label", { class: "wide" }, "text ", text),
      el("label", {}, "model ", pickA.select),
      el("label", {}, "side by side with ", pickB.select),
      el("label", {}, "layer ", layer),
      el("label", { title: "variance over the tokens; saturation: share of values near the ends of the range; jump: change on reading the chosen token" }, "sort units by ", sortBy),
      el("label", {}, "on ", sortGate),
      el("label", {}, "token ", sortToken),
      el("label", {}, "show ", limit),
      status,
    ),
    error,
    links,
    columns,
    unitBox,
  );

  let answers = []; // per column: {ref, data, flats: {gate: flat}, scales, hiddenSize}
  let seq = 0;
  let loadedKey = "";

  // Sorting needs every unit; "top N by index" needs only the first N.
  function fetchKey() {
    const n = Number(limit.value);
    return { units: sortBy.value === "index" && n > 0 ? n : 0 };
  }

  function pictureLinks(ref) {
    const q = new URLSearchParams({ model: ref, text: text.value, layers: layer.value });
    links.replaceChildren(
      "Server-side pictures: ",
      el("a", { href: `/gates.svg?${q}`, target: "_blank" }, "SVG"),
      " · ",
      el("a", { href: `/gates.png?${q}`, target: "_blank" }, "PNG"),
    );
  }

  // The unit a column of the fetched rows stands for: /gates answers `units` when sliced.
  const unitId = (data, column) => (data.units ? data.units[column] : column);

  function showUnit(col, column) {
    const { data, flats } = answers[col];
    const unit = unitId(data, column);
    const series = Object.entries(flats).map(([gate, flat]) => ({
      name: gate,
      points: Array.from({ length: flat.T }, (_, t) => [t, flat.values[t * flat.H + column]]),
    }));
    const title = data.arch === "lstm" ? "the cell state is the LSTM's conveyor belt" : "";
    unitBox.replaceChildren(
      el("h3", {}, `${data.model} v${data.version}, layer ${layer.value}, unit ${unit}`, title ? el("small", {}, ` — ${title}`) : ""),
      lineChart(series, { width: Math.min(1100, 120 + data.tokens.length * 22), height: 280, xLabels: data.tokens, yLabel: "value" }),
    );
    unitBox.dataset.unit = String(unit);
  }

  function renderColumn(col, width) {
    const { data, flats, scales } = answers[col];
    const gates = Object.keys(flats);
    if (!sortGate.options.length || ![...sortGate.options].some((o) => o.value === sortGate.value)) {
      sortGate.replaceChildren(...gates.map((g) => el("option", { value: g }, g)));
      sortGate.value = gates.includes("cell") ? "cell" : "hidden";
    }
    const basis = flats[sortGate.value] ? sortGate.value : "hidden";
    const order = unitOrder(flats[basis], basis, sortBy.value, {
      token: Number(sortToken.value) || 0,
      top: scales[basis][1],
      limit: Number(limit.value),
    });
    const T = data.tokens.length;
    const [cw, ch] = cellSize(T, order.length, width);
    const box = el("div", { class: "gate-column", dataset: { model: data.model, version: String(data.version) } });
    const total = answers[col].hiddenSize || flats.hidden.H;
    box.append(el("h3", {}, `${data.model} v${data.version} (${data.arch}) — ${T} tokens × ${order.length} of ${total} units`));
    const layerSummary = data.summary.layers.find((l) => String(l.layer) === layer.value);
    if (layerSummary) box.append(el("div", { class: "sat" }, el("h4", {}, "saturation"), saturationChart(layerSummary)));
    for (const gate of gates) {
      const canvas = el("canvas", { class: "heatmap", dataset: { gate, tokens: String(T), units: String(order.length) } });
      paint(canvas, gate, flats[gate], order, scales[gate]);
      canvas.style.width = `${T * cw}px`;
      canvas.style.height = `${order.length * ch}px`;
      canvas.addEventListener("mousemove", (ev) => {
        const cell = cellAt(canvas, ev, cw, ch);
        if (!cell) return;
        const unit = unitId(data, order[cell.r]);
        const value = flats[gate].values[cell.t * flats[gate].H + order[cell.r]];
        tooltip.hidden = false;
        tooltip.textContent = `“${data.tokens[cell.t]}” (token ${cell.t}) · unit ${unit} · ${gate} = ${value}`;
        Object.assign(tooltip.dataset, { model: data.model, gate, t: cell.t, unit, value: String(value) });
        tooltip.style.left = `${ev.clientX + 14}px`;
        tooltip.style.top = `${ev.clientY + 14}px`;
      });
      canvas.addEventListener("mouseleave", () => {
        tooltip.hidden = true;
      });
      canvas.addEventListener("click", (ev) => {
        const cell = cellAt(canvas, ev, cw, ch);
        if (cell) showUnit(col, order[cell.r]);
      });
      box.append(
        el("div", { class: "gate-head" }, el("strong", {}, gate), legend(gate, scales[gate])),
        canvas,
      );
    }
    if (cw >= 6) box.append(tokenStrip(data.tokens, data.unknown, cw));
    return box;
  }

  function render() {
    const t0 = performance.now();
    const width = (columns.clientWidth || 1000) / Math.max(1, answers.length) - 24;
    columns.replaceChildren(...answers.map((_, i) => renderColumn(i, width)));
    const ms = performance.now() - t0;
    window.gatehouseLastRender = { ms, cells: answers.reduce((n, a) => n + Object.values(a.flats).reduce((m, f) => m + f.T * f.H, 0), 0) };
    columns.dataset.renderMs = ms.toFixed(1);
  }

  async function load() {
    const mine = ++seq;
    const refs = [pickA.select.value, pickB.select.value].filter(Boolean);
    api.showError(error, null);
    status.textContent = "loading…";
    columns.dataset.state = "loading";
    try {
      const t0 = performance.now();
      const served = await api.servedModels().catch(() => []);
      const infos = refs.map((ref) => served.find((m) => m.name === ref.split("@")[0]));
      const key = fetchKey();
      const results = await Promise.all(
        refs.map((ref, i) => {
          const params = { model: ref, text: text.value, layers: layer.value, top_k: 5 };
          // Units in index order, top N only: those N are all that is drawn, so fetch just them.
          const first = key.units && infos[i] ? Math.min(key.units, infos[i].hidden_size) : 0;
          if (first) params.units = `0-${first - 1}`;
          const decimals = roundingFor(infos[i], text.value, first);
          if (decimals !== null) params.round = decimals;
          return api.get("/gates", params);
        }),
      );
      if (mine !== seq) return;
      loadedKey = JSON.stringify(key);
      const fetched = performance.now();
      answers = results.map((data, i) => {
        const gatesOf = data.layers[0].gates;
        const flats = {};
        const scales = {};
        for (const [gate, rows] of Object.entries(gatesOf)) {
          flats[gate] = flatten(rows);
          scales[gate] = scaleOf(gate, flats[gate].values);
        }
        return { ref: refs[i], data, flats, scales, hiddenSize: infos[i]?.hidden_size };
      });
      const tokens = answers[0].data.tokens;
      const keep = sortToken.value;
      sortToken.replaceChildren(...tokens.map((tok, i) => el("option", { value: i }, `${i}: ${tok}`)));
      if (keep && Number(keep) < tokens.length) sortToken.value = keep;
      render();
      const flattenMs = performance.now() - fetched - Number(columns.dataset.renderMs);
      window.gatehouseLastRender.fetchMs = fetched - t0;
      window.gatehouseLastRender.flattenMs = flattenMs;
      pictureLinks(refs[0]);
      status.textContent = `${fmt(fetched - t0, 0)} ms fetch, ${columns.dataset.renderMs} ms draw`;
      columns.dataset.state = "ready";
      columns.dataset.text = text.value;
    } catch (err) {
      if (mine !== seq) return;
      answers = [];
      columns.replaceChildren();
      status.textContent = "";
      columns.dataset.state = "error";
      links.replaceChildren();
      api.showError(error, err);
    }
  }

  async function updateLayers() {
    const models = await api.servedModels().catch(() => []);
    const name = pickA.select.value.split("@")[0];
    const m = models.find((x) => x.name === name);
    const n = m ? m.num_layers : 1;
    const keep = layer.value;
    layer.replaceChildren(...Array.from({ length: n }, (_, i) => el("option", { value: i }, String(i))));
    if (Number(keep) < n) layer.value = keep;
  }

  const later = debounce(load, 350);
  text.addEventListener("input", () => later());
  text.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      later.now();
    }
  });
  for (const sel of [pickA.select, pickB.select]) {
    sel.addEventListener("change", async () => {
      await updateLayers();
      sortGate.replaceChildren();
      later.now();
    });
  }
  layer.addEventListener("change", () => later.now());
  for (const sel of [sortBy, sortGate, sortToken, limit]) {
    sel.addEventListener("change", () => {
      if (JSON.stringify(fetchKey()) !== loadedKey) later.now();
      else if (answers.length) render();
    });
  }

  return {
    async show() {
      await Promise.all([pickA.ready, pickB.ready]);
      await updateLayers();
      if (!answers.length) load();
    },
  };
}
