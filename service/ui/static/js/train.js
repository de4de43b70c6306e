// The training view: start a job, follow its loss and validation perplexity live over
// Server-Sent Events, cancel it, and see its version appear among the served models.
import * as api from "./api.js";
import { lineChart } from "./charts.js";
import { el, fmt } from "./dom.js";

function field(label, input) {
  return el("label", {}, `${label} `, input);
}

async function waitForVersion(name, version) {
  // The server picks a new version up within its reload interval (2 s by default).
  for (let i = 0; i < 60; i++) {
    try {
      const m = await api.get(`/models/${name}`);
      if (m.versions.some((v) => v.version === version && v.loaded) || m.version >= version) return m;
    } catch (err) {
      if (err.status !== 404) throw err;
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  throw new Error(`${name} v${version} was saved but is not served yet`);
}

export function mount(root, ctx) {
  const name = el("input", { id: "train-name", value: "my-gru", pattern: "[a-z0-9][a-z0-9_\\-]{0,63}" });
  const arch = el("select", { id: "train-arch" }, ["gru", "lstm", "rnn"].map((a) => el("option", { value: a }, a)));
  const source = el("select", { id: "train-source" },
    ctx.config.builtins.map((b) => el("option", { value: `builtin:${b}` }, `built-in: ${b}`)),
    el("option", { value: "file" }, "a text file…"));
  const file = el("input", { type: "file", id: "train-file", accept: ".txt,text/plain", hidden: true });
  const hidden = el("input", { id: "train-hidden", type: "number", value: 64, min: 1 });
  const layers = el("input", { id: "train-layers", type: "number", value: 1, min: 1 });
  const epochs = el("input", { id: "train-epochs", type: "number", value: 2, min: 1 });
  const maxSteps = el("input", { id: "train-max-steps", type: "number", min: 1, placeholder: "no limit" });
  const start = el("button", { type: "submit", id: "train-start" }, "Start training");
  const cancel = el("button", { type: "button", id: "train-cancel", disabled: true }, "Cancel");
  const error = el("div", { class: "error", role: "alert", hidden: true, id: "train-error" });
  const status = el("p", { class: "status", id: "train-status" });
  const progress = el("progress", { id: "train-progress", max: 1, value: 0 });
  const lossBox = el("div", { id: "train-loss", class: "chart" });
  const pplBox = el("div", { id: "train-ppl", class: "chart" });
  const landed = el("p", { id: "train-version", class: "landed", hidden: true });
  source.addEventListener("change", () => {
    file.hidden = source.value !== "file";
  });

  const form = el("form", { class: "controls train-form", id: "train-form" },
    field("name", name), field("arch", arch), field("corpus", source), file,
    field("hidden size", hidden), field("layers", layers), field("epochs", epochs), field("max steps", maxSteps),
    start, cancel);

  root.append(
    el("h2", {}, "Train a model"),
    el("p", { class: "hint" }, "The job runs on the server; the curves come from its event stream. When it succeeds the new version is served and appears in every model picker. Set the API key at the top when the server has one."),
    form, error, el("div", { class: "train-live" }, progress, status), landed,
    el("div", { class: "chart-row" }, lossBox, pplBox),
  );

  let job = null;
  let stream = null;
  let loss = [];
  let ppl = [];

  function draw() {
    if (!loss.length && !ppl.length) {
      lossBox.replaceChildren();
      pplBox.replaceChildren();
      lossBox.dataset.points = pplBox.dataset.points = "0";
      return;
    }
    lossBox.replaceChildren(el("h4", {}, "training loss"), lineChart([{ name: "loss", colour: "#d95f02", points: loss }], { width: 460, height: 240, xLabel: "step", yLabel: "loss" }));
    lossBox.dataset.points = String(loss.length);
    pplBox.replaceChildren(el("h4", {}, "validation perplexity"), lineChart([{ name: "val ppl", colour: "#1b9e77", points: ppl }], { width: 460, height: 240, xLabel: "epoch", yLabel: "perplexity" }));
    pplBox.dataset.points = String(ppl.length);
  }

  function onJob(j) {
    progress.value = j.progress ?? 0;
    const m = j.metrics || {};
    status.textContent = `job ${j.job_id}: ${j.status}` + (m.step ? ` · step ${m.step}/${m.total_steps ?? "?"}` : "") + (m.loss ? ` · loss ${fmt(m.loss)}` : "") + (j.error ? ` · ${j.error}` : "");
    status.dataset.status = j.status;
    for (const h of j.history || []) {
      if (h.val_ppl) addPpl(h.epoch, h.val_ppl);
    }
  }

  // One point per epoch: a stream that reconnects, or a job resumed from its checkpoint,
  // reports an epoch again, and the chart must not count it twice.
  function addPpl(epoch, value) {
    const at = ppl.findIndex((p) => p[0] === epoch);
    if (at >= 0) ppl[at] = [epoch, value];
    else ppl.push([epoch, value]);
    ppl.sort((a, b) => a[0] - b[0]);
  }

  async function finish(j) {
    onJob(j);
    cancel.disabled = true;
    start.disabled = false;
    stream?.close();
    stream = null;
    draw();
    if (j.status !== "succeeded" || !j.model) return;
    try {
      await waitForVersion(j.model.name, j.model.version);
      await api.modelRefs(true);
      window.dispatchEvent(new Event("gatehouse:models"));
      landed.hidden = false;
      landed.textContent = `${j.model.name} v${j.model.version} is served: pick ${j.model.name}@${j.model.version} in any model picker.`;
      Object.assign(landed.dataset, { name: j.model.name, version: String(j.model.version) });
    } catch (err) {
      api.showError(error, err);
    }
  }

  function follow(id) {
    stream = new EventSource(`/jobs/${id}/events`);
    const read = (handler) => (ev) => handler(JSON.parse(ev.data));
    stream.addEventListener("status", read(onJob));
    // Progress at an epoch's end (and at the run's) carries the epoch's mean loss, not the
    // latest window's: plotted among the window losses it would show as a spike.
    const epochSteps = new Set();
    const seenSteps = new Set(); // a reconnected stream replays progress already drawn
    stream.addEventListener("progress", read((p) => {
      if (Number.isFinite(p.loss) && Number.isFinite(p.step) && !epochSteps.has(p.step) && !seenSteps.has(p.step)) {
        seenSteps.add(p.step);
        loss.push([p.step, p.loss]);
      }
      progress.value = p.progress ?? progress.value;
      status.textContent = `job ${id}: running · step ${p.step}/${p.total_steps ?? "?"} · loss ${fmt(p.loss)}`;
      draw();
    }));
    stream.addEventListener("epoch", read((e) => {
      epochSteps.add(e.step);
      if (e.val_ppl) addPpl(e.epoch, e.val_ppl);
      draw();
    }));
    stream.addEventListener("end", read(finish));
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    api.showError(error, null);
    landed.hidden = true;
    loss = [];
    ppl = [];
    draw();
    const hp = { hidden_size: Number(hidden.value), embedding_size: Number(hidden.value), num_layers: Number(layers.value), epochs: Number(epochs.value) };
    if (maxSteps.value) hp.max_steps = Number(maxSteps.value);
    start.disabled = true;
    try {
      if (source.value === "file") {
        if (!file.files.length) throw new Error("choose a text file first");
        const form = new FormData();
        form.append("file", file.files[0]);
        form.append("name", name.value);
        form.append("arch", arch.value);
        for (const [k, v] of Object.entries(hp)) form.append(k, String(v));
        job = await api.postForm("/train", form);
      } else {
        const builtin = source.value.slice("builtin:".length);
        job = await api.post("/train", { name: name.value, arch: arch.value, corpus: { builtin }, ...hp });
      }
      cancel.disabled = false;
      status.textContent = `job ${job.job_id}: queued`;
      draw();
      follow(job.job_id);
    } catch (err) {
      start.disabled = false;
      api.showError(error, err);
      if (err.status === 401) error.textContent += " — enter the server's API key at the top right.";
    }
  });

  cancel.addEventListener("click", async () => {
    if (!job) return;
    try {
      const j = await api.del(`/jobs/${job.job_id}`);
      onJob(j);
    } catch (err) {
      api.showError(error, err);
    }
  });

  return { show() {} };
}
