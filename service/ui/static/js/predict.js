// The predict view: one text, each chosen model's next-word distribution side by side.
import * as api from "./api.js";
import { barChart, colourFor } from "./charts.js";
import { debounce, el } from "./dom.js";
import { DEFAULT_TEXT } from "./gates.js";
import { modelPicker } from "./picker.js";

const TOP_K = 10;

function markedTokens(tokens, unknown) {
  const unk = new Set(unknown);
  return el(
    "p",
    { class: "tokens" },
    tokens.map((tok) =>
      el("span", { class: unk.has(tok) ? "tok unk" : "tok", title: unk.has(tok) ? "not in this model's vocabulary: read as <unk>" : null }, tok),
    ),
  );
}

export function mount(root) {
  const text = el("textarea", { rows: 3, id: "predict-text", spellcheck: "false" }, DEFAULT_TEXT);
  const columns = el("div", { class: "predict-columns", id: "predict-columns" });
  const add = el("button", { type: "button", id: "predict-add" }, "+ model");
  const columnsState = [];

  function addColumn(preferred) {
    const picker = modelPicker(preferred, { id: null });
    const result = el("div", { class: "result" });
    const error = el("div", { class: "error", role: "alert", hidden: true });
    const close = el("button", { type: "button", class: "close", title: "remove" }, "×");
    const box = el("section", { class: "predict-column" }, el("div", { class: "column-head" }, picker.select, close), error, result);
    const column = { picker, box, result, error, seq: 0 };
    close.addEventListener("click", () => {
      columnsState.splice(columnsState.indexOf(column), 1);
      box.remove();
    });
    picker.select.addEventListener("change", () => ask(column));
    columnsState.push(column);
    columns.append(box);
    return column;
  }

  async function ask(column) {
    const mine = ++column.seq;
    const value = text.value;
    const ref = column.picker.select.value;
    column.box.dataset.state = "loading";
    try {
      const r = await api.post("/predict", { text: value, model: ref || undefined, top_k: TOP_K });
      if (mine !== column.seq) return;
      api.showError(column.error, null);
      const bars = r.predictions.map((p) => ({ label: p.word, value: p.prob, colour: colourFor(r.arch) }));
      column.result.replaceChildren(
        el("p", { class: "top" }, "next word: ", el("strong", { class: "top-word" }, r.predictions[0]?.word ?? "–")),
        barChart(bars, { width: 320, max: 1, label: `${r.model} next-word probabilities` }),
        markedTokens(r.tokens, r.unknown),
        r.unknown.length ? el("p", { class: "hint" }, `unknown to ${r.model}: ${r.unknown.join(", ")}`) : "",
      );
      Object.assign(column.box.dataset, { model: r.model, version: String(r.version), text: value, top: r.predictions[0]?.word ?? "", state: "ready" });
    } catch (err) {
      if (mine !== column.seq) return;
      column.result.replaceChildren();
      api.showError(column.error, err);
      Object.assign(column.box.dataset, { text: value, state: "error" });
    }
  }

  const askAll = () => columnsState.forEach(ask);
  const later = debounce(askAll, 300);
  text.addEventListener("input", () => later());
  text.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      later.now();
    }
  });
  add.addEventListener("click", async () => {
    const column = addColumn("");
    await column.picker.ready;
    ask(column);
  });

  root.append(
    el("h2", {}, "Predict, side by side"),
    el("p", { class: "hint" }, "The next-word distribution of each model for the same text. Updates as you type; Enter asks at once. Words a model does not know are struck through."),
    el("div", { class: "controls" }, el("label", { class: "wide" }, "text ", text), add),
    columns,
  );

  let started = false;
  return {
    async show() {
      if (started) return;
      started = true;
      const models = await api.servedModels().catch(() => []);
      const names = models.map((m) => m.name);
      const defaults = ["rnn", "lstm", "gru"].filter((n) => names.includes(n));
      const chosen = defaults.length ? defaults : names.slice(0, 3);
      for (const name of chosen.length ? chosen : [""]) addColumn(name);
      await Promise.all(columnsState.map((c) => c.picker.ready));
      askAll();
    },
  };
}
