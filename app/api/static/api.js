// Shared by the dashboard pages: calls to the JSON API (with the API key), DOM and format helpers.
// The key is asked for once, on the first 401, and kept in sessionStorage: it lasts while the
// tab is open and is never written to disk or sent anywhere but this origin.

const KEY_STORAGE = "sweepserve.apiKey";
let pendingKeyPrompt = null;

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

/** fetch() a JSON endpoint (a Blob with `raw: true`); a problem body becomes an ApiError carrying its detail. */
export async function api(path, options = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = new Headers(options.headers || {});
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401 && attempt < 3) {
      await askForKey(Boolean(key));
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, await readProblem(response));
    if (response.status === 204) return null;
    return options.raw ? response.blob() : response.json();
  }
}

async function readProblem(response) {
  try {
    return await response.json();
  } catch {
    return { title: response.statusText, detail: `HTTP ${response.status} ${response.statusText}` };
  }
}

/** One dialog for all the requests that got a 401 at the same time. */
function askForKey(wasWrong) {
  if (!pendingKeyPrompt) {
    pendingKeyPrompt = showKeyDialog(wasWrong).finally(() => {
      pendingKeyPrompt = null;
    });
  }
  return pendingKeyPrompt;
}

function showKeyDialog(wasWrong) {
  return new Promise((resolve, reject) => {
    const input = h("input", { type: "password", id: "api-key", autocomplete: "off", required: true });
    const form = h(
      "form",
      { method: "dialog" },
      h("h2", {}, "API key"),
      h("p", {}, wasWrong ? "That key was refused. Try again:" : "This server needs an API key (SWEEPSERVE_API_KEY)."),
      input,
      h("menu", {}, h("button", { type: "button", value: "cancel" }, "Cancel"), h("button", { type: "submit" }, "Use key")),
    );
    const dialog = h("dialog", { id: "key-dialog" }, form);
    document.body.append(dialog);
    form.querySelector("button[value=cancel]").addEventListener("click", () => {
      dialog.close();
      dialog.remove();
      reject(new ApiError(401, { detail: "an API key is needed to see this page's data" }));
    });
    form.addEventListener("submit", () => {
      sessionStorage.setItem(KEY_STORAGE, input.value.trim());
      dialog.remove();
      resolve();
    });
    dialog.showModal();
    input.focus();
  });
}

/** h("a", {href: "/"}, "text", child) -- text always goes in as text, never as HTML. */
export function h(tag, attrs = {}, ...children) {
  const svg = ["svg", "path", "g", "line", "text", "title", "circle", "rect"].includes(tag);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function showError(error) {
  const box = document.getElementById("error");
  if (!box) return;
  box.hidden = !error;
  box.textContent = error ? error.message || String(error) : "";
}

export const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(2)} %`);
export const num = (x, digits = 4) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

export function params(obj) {
  // 6 significant digits: a grid step of 0.05 shows as 0.15, not 0.15000000000000002.
  const show = (v) => (typeof v === "number" ? String(Number(v.toPrecision(6))) : JSON.stringify(v));
  const entries = Object.entries(obj || {});
  return entries.length ? entries.map(([k, v]) => `${k}=${show(v)}`).join(", ") : "(base config)";
}

export const ACTIVE = new Set(["queued", "running"]);

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}` }, status);
}

/** Calls `tick` now and then every `ms` while it returns true; a failed tick shows and retries. */
export function poll(tick, ms) {
  const live = document.getElementById("live");
  let timer = null;
  const run = async () => {
    let again = true;
    try {
      again = await tick();
      showError(null);
    } catch (error) {
      showError(error);
      again = !(error instanceof ApiError && [401, 404].includes(error.status));
    }
    if (live) live.hidden = !again;
    if (again) timer = setTimeout(run, typeof ms === "function" ? ms() : ms);
  };
  run();
  return () => clearTimeout(timer);
}
