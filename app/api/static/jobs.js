// The jobs list: GET /jobs (cursor pages, newest first), each item with its best val accuracy.

import { ACTIVE, api, h, pct, poll, statusBadge, when } from "./api.js";

const ACTIVE_POLL_MS = 2000;
const IDLE_POLL_MS = 10000;
const state = { pages: 1, items: [], nextCursor: null, anyActive: false };

async function fetchPages() {
  const status = document.getElementById("status-filter").value;
  const items = [];
  let cursor = null;
  for (let page = 0; page < state.pages; page++) {
    const query = new URLSearchParams({ limit: "20" });
    if (cursor) query.set("cursor", cursor);
    if (status) query.set("status", status);
    const body = await api(`/jobs?${query}`);
    items.push(...body.items);
    cursor = body.next_cursor;
    if (!cursor) break;
  }
  return { items, nextCursor: cursor };
}

async function tick() {
  const { items, nextCursor } = await fetchPages();
  Object.assign(state, { items, nextCursor, anyActive: items.some((job) => ACTIVE.has(job.status)) });
  render();
  return true; // new jobs can appear at any time
}

function progressCell(job) {
  const total = Object.values(job.progress).reduce((a, b) => a + b, 0);
  const done = total - job.progress.queued - job.progress.running;
  const meter = h("meter", { min: 0, max: total || 1, value: done });
  return h("td", {}, meter, ` ${done}/${total}`, job.progress.running ? ` (${job.progress.running} running)` : "");
}

function render() {
  const rows = state.items.map((job) =>
    h(
      "tr",
      { dataset: { jobId: job.id } },
      h("td", { class: "num" }, job.id),
      h("td", {}, h("a", { href: `/ui/jobs/${job.id}` }, job.name)),
      h("td", {}, statusBadge(job.status)),
      progressCell(job),
      h("td", { class: "num" }, pct(job.best_val_accuracy)),
      h("td", {}, when(job.created_at)),
    ),
  );
  document.querySelector("#jobs tbody").replaceChildren(...rows);
  document.getElementById("empty").hidden = state.items.length > 0;
  document.getElementById("more").hidden = !state.nextCursor;
}

document.getElementById("more").addEventListener("click", () => {
  state.pages += 1;
  tick();
});
document.getElementById("status-filter").addEventListener("change", () => {
  state.pages = 1;
  tick();
});

poll(tick, () => (state.anyActive ? ACTIVE_POLL_MS : IDLE_POLL_MS));
