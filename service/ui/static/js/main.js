// Entry point: the views behind one navigation bar, chosen by the URL path (/ui/<view>).
import * as api from "./api.js";
import * as compare from "./compare.js";
import * as gates from "./gates.js";
import * as longrange from "./longrange.js";
import * as models from "./models.js";
import * as predict from "./predict.js";
import * as train from "./train.js";

const VIEWS = { predict, gates, longrange, train, models, compare };
const mounted = {};

function viewOf(path) {
  const name = path.replace(/^\/ui\/?/, "").replace(/\/$/, "");
  return VIEWS[name] ? name : "predict";
}

async function show(name, ctx) {
  for (const [key, section] of Object.entries(ctx.sections)) section.hidden = key !== name;
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    link.classList.toggle("active", link.dataset.view === name);
  }
  if (!mounted[name]) mounted[name] = VIEWS[name].mount(ctx.sections[name], ctx);
  document.body.dataset.view = name;
  await mounted[name].show();
}

// While the server is still training its default models every call answers 503: say so
// once at the top, and reload when a model is served so the views start over with it.
async function watchReadiness(banner) {
  try {
    await api.get("/readyz");
    api.showError(banner, null);
  } catch (err) {
    api.showError(banner, err);
    if (err.status === 503) {
      banner.textContent += " — this page reloads itself once a model is served.";
      const wait = Math.min(30, Math.max(1, Number(err.retryAfter) || 5));
      setTimeout(async () => {
        const ready = await api.get("/readyz").then(() => true, () => false);
        if (ready) location.reload();
        else watchReadiness(banner);
      }, wait * 1000);
    }
  }
}

async function main() {
  const keyInput = document.getElementById("api-key");
  keyInput.value = api.apiKey();
  keyInput.addEventListener("input", () => api.setApiKey(keyInput.value.trim()));
  const sections = {};
  for (const name of Object.keys(VIEWS)) sections[name] = document.getElementById(`view-${name}`);
  const banner = document.getElementById("banner");
  let config = { builtins: [], long_range: [], countries: [] };
  try {
    config = await api.get("/ui/config.json");
  } catch (err) {
    api.showError(banner, err);
  }
  const ctx = { config, sections };
  watchReadiness(banner);
  document.querySelector("nav").addEventListener("click", (ev) => {
    const link = ev.target.closest("a[data-view]");
    if (!link || ev.ctrlKey || ev.metaKey) return;
    ev.preventDefault();
    history.pushState({}, "", link.getAttribute("href"));
    show(link.dataset.view, ctx);
  });
  window.addEventListener("popstate", () => show(viewOf(location.pathname), ctx));
  await show(viewOf(location.pathname), ctx);
  document.body.dataset.ready = "1";
}

main();
