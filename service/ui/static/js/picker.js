// A <select> of every served model and version; refilled when a new version lands.
import * as api from "./api.js";
import { el } from "./dom.js";

export function modelPicker(preferred, { id, none = null } = {}) {
  const select = el("select", { id, class: "model-picker" });

  async function fill(refresh) {
    const keep = select.value || preferred;
    let refs = [];
    try {
      refs = await api.modelRefs(refresh);
    } catch {
      refs = []; // the views show the API's own error when they ask for a model
    }
    const options = refs.map((r) => el("option", { value: r.ref }, r.label));
    if (none !== null) options.unshift(el("option", { value: "" }, none));
    select.replaceChildren(...options);
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
    select.dataset.count = String(refs.length);
  }

  const ready = fill(false);
  window.addEventListener("gatehouse:models", () => fill(true));
  return { select, ready };
}
