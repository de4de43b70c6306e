// The models view: every served model, its versions, their metrics and training curves.
import * as api from "./api.js";
import { colourFor, lineChart } from "./charts.js";
import { el, fmt } from "./dom.js";

const SHOWN_METRICS = ["val_ppl", "test_ppl", "long_range_acc", "agreement_acc", "train_loss", "steps", "epochs", "train_seconds"];

function metricsList(metrics) {
  return el("dl", { class: "metrics" },
    SHOWN_METRICS.filter((k) => metrics?.[k] !== undefined).flatMap((k) => [el("dt", {}, k), el("dd", {}, fmt(metrics[k], 3))]));
}

function versionCard(model, v) {
  const curve = (v.history || []).filter((h) => Number.isFinite(h.val_ppl));
  return el("div", { class: "version", dataset: { name: model.name, version: String(v.version) } },
    el("h4", {}, `v${v.version}`, v.loaded ? el("span", { class: "badge" }, "served") : "", v.created_at ? el("small", {}, ` ${v.created_at}`) : ""),
    v.error ? el("p", { class: "error" }, v.error) : metricsList(v.metrics),
    curve.length
      ? lineChart([
          { name: "val ppl", colour: "#1b9e77", points: curve.map((h) => [h.epoch, h.val_ppl]) },
          { name: "train ppl", colour: "#d95f02", points: curve.filter((h) => Number.isFinite(h.train_ppl)).map((h) => [h.epoch, h.train_ppl]) },
        ], { width: 380, height: 200, xLabel: "epoch", yLabel: "perplexity", log: true })
      : el("p", { class: "hint" }, "no training curve recorded"));
}

// What `python -m models.compare --plot` draws, from the served versions' own histories:
// validation perplexity by epoch, one line per model, on one chart.
function comparison(details) {
  const series = details
    .map((m, i) => {
      const served = m.versions.find((v) => v.version === m.version) || {};
      const points = (served.history || []).filter((h) => Number.isFinite(h.val_ppl)).map((h) => [h.epoch, h.val_ppl]);
      return { name: `${m.name} v${m.version}`, colour: colourFor(m.name, i), points };
    })
    .filter((s) => s.points.length);
  if (!series.length) return el("div", { id: "models-compare" });
  return el("div", { id: "models-compare", class: "chart", dataset: { series: String(series.length) } },
    el("h4", {}, "validation perplexity by epoch, every served model"),
    lineChart(series, { width: 640, height: 280, xLabel: "epoch", yLabel: "perplexity", log: true }));
}

export function mount(root) {
  const error = el("div", { class: "error", role: "alert", hidden: true, id: "models-error" });
  const list = el("div", { id: "models-list" });
  const refresh = el("button", { type: "button" }, "Refresh");
  root.append(
    el("h2", {}, "Models"),
    el("p", { class: "hint" }, "Every served model with its versions, sizes and the metrics saved in its meta.json. The chart puts each served version's validation curve side by side, each from its own recipe; the three kinds on one budget and one corpus are in the ",
      el("a", { href: "/ui/compare" }, "Compare"), " view."),
    refresh, error, list);

  async function load() {
    api.showError(error, null);
    list.dataset.state = "loading";
    try {
      const models = await api.servedModels(true);
      const details = await Promise.all(models.map((m) => api.get(`/models/${m.name}`)));
      list.replaceChildren(
        el("table", { class: "numbers", id: "models-table" },
          el("tr", {}, ["name", "arch", "version", "params", "embedding", "hidden", "layers", "vocab", "val ppl", "device"].map((h) => el("th", {}, h))),
          ...details.map((m) => el("tr", { dataset: { name: m.name } },
            el("td", {}, m.name + (m.default ? " (default)" : "")), el("td", {}, m.arch), el("td", {}, `v${m.version}`),
            el("td", {}, m.params.toLocaleString("en")), el("td", {}, m.embedding_size), el("td", {}, m.hidden_size),
            el("td", {}, m.num_layers), el("td", {}, m.vocab_size), el("td", {}, fmt(m.metrics.val_ppl, 2)), el("td", {}, m.device)))),
        comparison(details),
        el("div", { class: "model-cards" }, details.map((m) => el("section", { class: "model-card" },
          el("h3", {}, `${m.name} — ${m.arch}, ${m.num_layers}×${m.hidden_size}`),
          el("div", { class: "versions" }, m.versions.map((v) => versionCard(m, v)))))),
      );
      list.dataset.state = "ready";
    } catch (err) {
      list.dataset.state = "error";
      api.showError(error, err);
    }
  }
  refresh.addEventListener("click", load);
  window.addEventListener("gatehouse:models", load);
  return { show: load };
}
