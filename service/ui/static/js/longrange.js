// The long-range view: P(the right language) as the gap between country and "i speak fluent"
// grows, live from the served models; then the gates of the units that carry the country.
import * as api from "./api.js";
import { colourFor, lineChart } from "./charts.js";
import { el, fmt } from "./dom.js";

const TOP_K = 50; // a language outside the 50 likeliest words counts as probability 0
const CARRIERS = 6;
const KEEP_GATE = { lstm: ["forget", "cell"], gru: ["update", "hidden"] };

function probOf(result, word) {
  const hit = result.predictions.find((p) => p.word === word);
  return hit ? hit.prob : 0;
}

async function curve(ref, gaps) {
  const rows = await Promise.all(
    gaps.map(async ({ gap, prompts }) => {
      const r = await api.post("/predict", { model: ref, texts: prompts.map((p) => p.text), top_k: TOP_K });
      const probs = r.results.map((res, i) => probOf(res, prompts[i].language));
      const hits = r.results.filter((res, i) => res.predictions[0].word === prompts[i].language).length;
      return { gap, prob: probs.reduce((a, b) => a + b, 0) / probs.length, top1: hits / probs.length };
    }),
  );
  return rows;
}

// The units whose carried state at the last token differs most between two countries.
function carriers(a, b, quantity) {
  const last = (d) => d.layers[0].gates[quantity].at(-1);
  const ha = last(a);
  const hb = last(b);
  return ha
    .map((v, u) => [Math.abs(v - hb[u]), u])
    .sort((x, y) => y[0] - x[0])
    .slice(0, CARRIERS)
    .map(([, u]) => u);
}

export function mount(root, ctx) {
  const gaps = ctx.config.long_range;
  const chartBox = el("div", { id: "longrange-chart", class: "chart" });
  const table = el("table", { id: "longrange-table", class: "numbers" });
  const error = el("div", { class: "error", role: "alert", hidden: true, id: "longrange-error" });
  const promptSel = el("select", { id: "longrange-prompt" });
  for (const { gap, prompts } of gaps) {
    prompts.forEach((p, i) => promptSel.append(el("option", { value: `${gap}:${i}` }, `gap ${gap}: ${p.country}`)));
  }
  promptSel.value = gaps.length > 2 ? "2:0" : "0:0";
  const gateBox = el("div", { id: "longrange-gates", class: "carriers" });
  const gateError = el("div", { class: "error", role: "alert", hidden: true });

  root.append(
    el("h2", {}, "Long range: does the model remember the country?"),
    el("p", { class: "hint" },
      "Each prompt is “i grew up in <country> . <gap filler sentences> i speak fluent”; the curve is the mean probability of the right language over ten countries, asked of the served models just now."),
    error,
    chartBox,
    table,
    el("h3", {}, "The units that carry the country"),
    el("p", { class: "hint" },
      "For one prompt, the units whose state at the end differs most from the same prompt with another country, and their keep gate over the tokens (LSTM forget gate, GRU update gate: near 1 keeps the old state)."),
    el("div", { class: "controls" }, el("label", {}, "prompt ", promptSel)),
    gateError,
    gateBox,
  );

  async function drawCurves(models) {
    api.showError(error, null);
    chartBox.dataset.state = "loading";
    try {
      const curves = await Promise.all(models.map(async (m) => ({ model: m, rows: await curve(m.name, gaps) })));
      const series = curves.map((c, i) => ({ name: c.model.name, colour: colourFor(c.model.arch, i), points: c.rows.map((r) => [r.gap, r.prob]) }));
      chartBox.replaceChildren(lineChart(series, { width: 640, height: 300, xLabel: "filler sentences between the country and “i speak fluent”", yLabel: "P(right language)", yMin: 0, yMax: 1 }));
      table.replaceChildren(
        el("tr", {}, el("th", {}, "model"), gaps.map((g) => el("th", {}, `gap ${g.gap}`)), el("th", {}, "mean")),
        ...curves.map((c) =>
          el("tr", { dataset: { model: c.model.name, arch: c.model.arch } },
            el("th", {}, `${c.model.name} (${c.model.arch})`),
            c.rows.map((r) => el("td", { dataset: { gap: String(r.gap), prob: String(r.prob), top1: String(r.top1) }, title: `top-1 right in ${fmt(r.top1 * 100, 0)}%` }, fmt(r.prob, 3))),
            el("td", { class: "mean", dataset: { prob: String(c.rows.reduce((s, r) => s + r.prob, 0) / c.rows.length) } }, fmt(c.rows.reduce((s, r) => s + r.prob, 0) / c.rows.length, 3)),
          ),
        ),
      );
      chartBox.dataset.state = "ready";
    } catch (err) {
      chartBox.dataset.state = "error";
      api.showError(error, err);
    }
  }

  async function drawCarriers(models) {
    const [g, i] = promptSel.value.split(":").map(Number);
    const prompt = gaps[g].prompts[i];
    const other = gaps[g].prompts[(i + 1) % gaps[g].prompts.length];
    api.showError(gateError, null);
    gateBox.dataset.state = "loading";
    try {
      const panels = [];
      for (const m of models.filter((x) => KEEP_GATE[x.arch])) {
        const [keep, carried] = KEEP_GATE[m.arch];
        const layers = String(m.num_layers - 1);
        const ask = (text) => api.get("/gates", { model: m.name, text, layers, round: 4, top_k: 1 });
        const [a, b] = await Promise.all([ask(prompt.text), ask(other.text)]);
        const units = carriers(a, b, carried);
        const rows = a.layers[0].gates[keep];
        const series = units.map((u, k) => ({ name: `unit ${u}`, colour: ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"][k], points: rows.map((r, t) => [t, r[u]]) }));
        panels.push(
          el("div", { class: "carrier-panel", dataset: { model: m.name, units: units.join(",") } },
            el("h4", {}, `${m.name}: ${keep} gate, layer ${layers}, units carrying “${prompt.country}” vs “${other.country}”`),
            lineChart(series, { width: Math.min(1000, 140 + a.tokens.length * 20), height: 260, xLabels: a.tokens, yLabel: `${keep} gate`, yMin: 0, yMax: 1 }),
          ),
        );
      }
      gateBox.replaceChildren(...(panels.length ? panels : [el("p", { class: "hint" }, "No LSTM or GRU model is served.")]));
      gateBox.dataset.state = "ready";
    } catch (err) {
      gateBox.dataset.state = "error";
      api.showError(gateError, err);
    }
  }

  let models = [];
  let started = false;
  promptSel.addEventListener("change", () => drawCarriers(models));
  return {
    async show() {
      if (started) return;
      started = true;
      try {
        const served = await api.servedModels();
        const defaults = served.filter((m) => ["rnn", "lstm", "gru"].includes(m.name));
        models = (defaults.length ? defaults : served).slice(0, 6);
      } catch (err) {
        api.showError(error, err);
        return;
      }
      await Promise.all([drawCurves(models), drawCarriers(models)]);
    },
  };
}
