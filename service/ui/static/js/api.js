// The page talks to the server through its public HTTP API only, via these helpers.

export class ApiError extends Error {
  constructor(status, kind, message, retryAfter) {
    super(message);
    this.status = status;
    this.kind = kind;
    this.retryAfter = retryAfter;
  }

  // "413 request_entity_too_large: 600 tokens, over the limit ..." as the API worded it.
  describe() {
    const wait = this.retryAfter ? ` (retry after ${this.retryAfter} s)` : "";
    return `${this.status} ${this.kind}: ${this.message}${wait}`;
  }
}

const KEY_STORE = "gatehouse.api_key";

export function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORE, key);
  else sessionStorage.removeItem(KEY_STORE);
}

function headers(extra = {}) {
  const out = { ...extra };
  const key = apiKey();
  if (key) out.authorization = `Bearer ${key}`;
  return out;
}

async function parse(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = body?.message || body?.detail || response.statusText || "request failed";
    const kind = body?.error || "error";
    throw new ApiError(response.status, kind, message, response.headers.get("retry-after"));
  }
  return body;
}

// A refusal the server expects to clear within seconds (a full queue: 503 or 429 with a short
// Retry-After) is retried after that wait; the request was never run, so sending it again is
// safe. Longer waits (no model loaded yet) are shown to the user at once.
const RETRIES = 2;
const RETRY_MAX_S = 3;

function retryWait(response) {
  if (response.status !== 503 && response.status !== 429) return null;
  const s = Number(response.headers.get("retry-after"));
  return Number.isFinite(s) && s > 0 && s <= RETRY_MAX_S ? s : null;
}

async function send(path, init) {
  for (let attempt = 0; ; attempt++) {
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, "network", `the server did not answer (${err.message})`);
    }
    const wait = attempt < RETRIES ? retryWait(response) : null;
    if (wait === null) return parse(response);
    await new Promise((resolve) => setTimeout(resolve, wait * 1000));
  }
}

export function get(path, params) {
  const query = params ? `?${new URLSearchParams(params)}` : "";
  return send(path + query, { headers: headers() });
}

export function post(path, body) {
  return send(path, {
    method: "POST",
    headers: headers({ "content-type": "application/json" }),
    body: JSON.stringify(body),
  });
}

export function postForm(path, form) {
  return send(path, { method: "POST", headers: headers(), body: form });
}

export function del(path) {
  return send(path, { method: "DELETE", headers: headers() });
}

// Show an error in the view's own alert box, never as a blank area.
export function showError(box, err) {
  if (!err) {
    box.hidden = true;
    box.textContent = "";
    delete box.dataset.status;
    return;
  }
  box.hidden = false;
  box.dataset.status = String(err.status ?? 0);
  box.textContent = err instanceof ApiError ? err.describe() : `error: ${err.message}`;
}

// Every served model and, lazily, each one's versions: the choices of the model pickers.
let modelCache = null;

export async function servedModels(refresh = false) {
  if (!modelCache || refresh) {
    modelCache = get("/models").then((r) => r.models);
    modelCache.catch(() => {
      modelCache = null;
    });
  }
  return modelCache;
}

let refsCache = null;

export function modelRefs(refresh = false) {
  if (!refsCache || refresh) {
    refsCache = listRefs(refresh);
    refsCache.catch(() => {
      refsCache = null;
    });
  }
  return refsCache;
}

async function listRefs(refresh) {
  const models = await servedModels(refresh);
  const details = await Promise.all(
    models.map((m) => get(`/models/${m.name}`).catch(() => ({ ...m, versions: [] }))),
  );
  const refs = [];
  for (const m of details) {
    refs.push({ ref: m.name, label: `${m.name} (v${m.version}, ${m.arch})`, arch: m.arch });
    for (const v of m.versions || []) {
      if (v.version !== m.version && !v.error) {
        refs.push({ ref: `${m.name}@${v.version}`, label: `${m.name}@${v.version}`, arch: m.arch });
      }
    }
  }
  return refs;
}
