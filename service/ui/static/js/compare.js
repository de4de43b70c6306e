// The Compare view: the three kinds at equal parameter count, as `python -m models.compare
// --report` measured them (served from the report.json the server was pointed at).
import * as api from "./api.js";
import { colourFor, lineChart } from "./charts.js";
import { el, fmt } from "./dom.js";

const COLUMNS = [
  ["epochs", "epochs", 0],
  ["steps", "steps", 0],
  ["train s", "train_seconds", 0],
  ["train tok/s", "tokens_per_s", 0],
  ["serve tok/s", "serve_tokens_per_s", 0],
  ["core fwd ms", "core_forward_ms", 1],
  ["core fwd+bwd ms", "core_train_ms", 1],
  ["best valid ppl", "val_ppl", 1],
  ["test ppl", "test_ppl", 1],
  ["long-range acc", "long_range_acc", 3],
];

function numbers(kinds, sizes) {
  const byArch = Object.fromEntries(sizes.map((s) => [s.arch, s]));
  return el("table", { class: "numbers", id: "compare-table" },
    el("tr", {}, ["kind", "hidden", "recurrent params", "total params", ...COLUMNS.map((c) => c[0])].map((h) => el("th", {}, h))),
    ...kinds.map((k) => {
      const s = byArch[k.arch] || {};
      return el("tr", { dataset: { arch: k.arch } },
        el("td", {}, k.arch), el("td", {}, fmt(s.hidden_size, 0)),
        el("td", {}, fmt(s.recurrent_params, 0)), el("td", {}, fmt(s.total_params, 0)),
        ...COLUMNS.map(([, key, digits]) => el("td", { dataset: { key } }, fmt(k[key], digits))));
    }));
}

// A titled chart; data-points counts what it drew, for the page's tests and for people.
function chartBox(id, title, series, opts) {
  const points = series.reduce((n, s) => n + s.points.length, 0);
  return el("div", { class: "chart", id, dataset: { points: String(points) } },
    el("h4", {}, title), lineChart(series, { width: 390, height: 250, ...opts }));
}

function curveChart(id, title, kinds, x, xLabel) {
  const series = kinds.map((k, i) => ({
    name: k.arch,
    colour: colourFor(k.arch, i),
    points: k.curve.filter((p) => Number.isFinite(p[x]) && Number.isFinite(p.val_ppl)).map((p) => [p[x], p.val_ppl]),
  }));
  return chartBox(id, title, series, { xLabel, yLabel: "validation perplexity", log: true });
}

function gapChart(kinds) {
  const shown = kinds.filter((k) => k.long_range_by_gap);
  if (!shown.length) return el("div", { class: "chart", id: "compare-gaps" });
  const series = shown.map((k, i) => ({
    name: k.arch,
    colour: colourFor(k.arch, i),
    points: Object.entries(k.long_range_by_gap).map(([g, acc]) => [Number(g), acc]).sort((a, b) => a[0] - b[0]),
  }));
  return chartBox("compare-gaps", "long-range accuracy by gap (built-in prompts)", series,
    { xLabel: "gap (filler sentences)", yLabel: "top-1 accuracy", yMin: 0, yMax: 1 });
}

function setupList(setup) {
  return el("dl", { class: "metrics compare-setup", id: "compare-setup" },
    Object.entries(setup).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
}

export function mount(root) {
  const error = el("div", { class: "error", role: "alert", hidden: true, id: "compare-error" });
  const body = el("div", { id: "compare-report" });
  root.append(
    el("h2", {}, "RNN, LSTM and GRU at equal parameter count"),
    el("p", { class: "hint" }, "One corpus, one time budget per kind, each kind as wide as makes its recurrent layers hold the LSTM's parameters. The figures are those of the run named below, on its machine; rerun ",
      el("code", {}, "python -m models.compare --report docs/comparison.md"), " to measure yours."),
    error, body);

  async function load() {
    api.showError(error, null);
    body.dataset.state = "loading";
    try {
      const report = await api.get("/ui/comparison.json");
      body.replaceChildren(
        el("h3", {}, "Is the GRU faster?"),
        el("p", { class: "verdict", id: "compare-verdict" }, report.verdict),
        numbers(report.kinds, report.sizes),
        el("div", { class: "chart-row" },
          curveChart("compare-by-epoch", "validation perplexity by epoch", report.kinds, "epoch", "epoch"),
          curveChart("compare-by-seconds", "validation perplexity by training seconds", report.kinds, "seconds", "training seconds"),
          gapChart(report.kinds)),
        el("h3", {}, "The run"),
        setupList(report.setup),
      );
      body.dataset.state = "ready";
    } catch (err) {
      body.replaceChildren();
      body.dataset.state = "error";
      api.showError(error, err);
    }
  }
  return { show: load };
}
