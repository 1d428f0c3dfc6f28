// The job page: status, best trial, learning curves of every trial, a sortable trial table, cancel.
// Polls GET /jobs/{id} every 2 s while the job is queued or running; the curves come from
// GET /jobs/{id}/history, re-read only when some trial has finished another epoch.

import { ACTIVE, ApiError, api, h, num, params, pct, poll, showError, statusBadge, when } from "./api.js";
import { colorFor, drawLineChart } from "./chart.js";
import { drawIntervals } from "./intervals.js";

const POLL_MS = 2000;
const jobId = Number(location.pathname.split("/").pop());
const state = { job: null, history: {}, historyKey: "", sort: { key: "val_accuracy", desc: true } };

const accuracy = (v) => `${Math.round(v * 1000) / 10} %`;
const loss = (v) => (Math.abs(v) >= 10 ? v.toFixed(0) : v.toFixed(2));

async function tick() {
  const job = await api(`/jobs/${jobId}`);
  // One number per trial that changes whenever a trial gains an epoch or changes status.
  const key = job.trials.map((t) => `${t.id}:${t.epoch}:${t.status}`).join(",");
  if (key !== state.historyKey) {
    state.history = await api(`/jobs/${jobId}/history`);
    state.historyKey = key;
  }
  state.job = job;
  render();
  return ACTIVE.has(job.status);
}

function render() {
  const job = state.job;
  document.title = `sweepserve · ${job.name} (#${job.id})`;
  document.getElementById("job-title").textContent = `${job.name} · job ${job.id}`;
  document.getElementById("job-status").replaceWith(Object.assign(statusBadge(job.status), { id: "job-status" }));
  document.getElementById("job-times").textContent =
    `created ${when(job.created_at)} · started ${when(job.started_at)} · finished ${when(job.finished_at)}`;
  document.getElementById("cancel").hidden = !ACTIVE.has(job.status);
  document.getElementById("spec").textContent = JSON.stringify(job.spec, null, 2);
  renderProgress(job);
  renderBest(job);
  renderCharts(job);
  renderIntervals(job);
  renderTable(job);
}

function renderProgress(job) {
  const total = job.trials.length || 1;
  const bar = document.getElementById("progress");
  bar.replaceChildren(
    ...Object.entries(job.progress)
      .filter(([status, n]) => n && status !== "eta_seconds")
      .map(([status, n]) =>
        h("span", { class: `segment status-${status}`, title: `${n} ${status}`, dataset: { share: n / total } }, `${n} ${status}`),
      ),
  );
  // Widths through the CSSOM: the page's Content-Security-Policy forbids inline style attributes.
  for (const segment of bar.children) segment.style.flexGrow = segment.dataset.share;
  const eta = job.progress.eta_seconds;
  document.getElementById("eta").textContent = !ACTIVE.has(job.status)
    ? ""
    : eta === null || eta === undefined
      ? "ETA: after the first epoch"
      : `ETA ${duration(eta)}`;
}

function duration(seconds) {
  const s = Math.round(seconds);
  const [h, m] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60)];
  const mmss = `${String(m).padStart(h ? 2 : 1, "0")}:${String(s % 60).padStart(2, "0")}`;
  return h ? `${h}:${mmss}` : mmss;
}

function renderBest(job) {
  const best = job.best;
  const card = document.getElementById("best");
  card.hidden = !best;
  if (!best) return;
  const trial = job.trials.find((t) => t.id === best.trial_id);
  const model = best.model_id ? `model ${best.model_id}` : ACTIVE.has(job.status) ? "registered when the trial finishes" : "none";
  const fields = [
    ["trial", `#${trial?.index ?? "?"} (id ${best.trial_id}, ${trial?.status ?? "?"})`],
    ["params", params(best.params)],
    ["val accuracy", pct(best.val_accuracy)],
    ["test accuracy", pct(best.test_accuracy)],
    ["best epoch", best.epoch ?? "–"],
    ["model", model],
  ];
  document.getElementById("best-fields").replaceChildren(...fields.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function seriesFor(job, column) {
  const bestId = job.best?.trial_id;
  const trials = [...job.trials].sort((a, b) => (a.id === bestId) - (b.id === bestId)); // best drawn last
  return trials.map((t) => ({
    id: t.id,
    label: `trial #${t.index} (${t.status}) ${params(t.params)}`,
    color: colorFor(t.index),
    className: [t.id === bestId && "best", t.status === "pruned" && "pruned", ["failed", "cancelled"].includes(t.status) && "failed"]
      .filter(Boolean)
      .join(" "),
    points: (state.history[String(t.id)] || []).map((row) => [row.epoch, row[column]]),
  }));
}

function renderCharts(job) {
  const xMax = Math.max(1, ...job.trials.map((t) => t.epochs));
  drawLineChart(document.getElementById("chart-val"), seriesFor(job, "val_accuracy"), {
    yLabel: "val accuracy",
    yFormat: accuracy,
    clamp: [0, 1],
    xMax,
  });
  drawLineChart(document.getElementById("chart-loss"), seriesFor(job, "train_loss"), {
    yLabel: "train loss",
    yFormat: loss,
    yMin: 0,
    xMax,
  });
}

function renderIntervals(job) {
  const label = (p) => `#${p.point} ${params(p.params)}`.slice(0, 24);
  drawIntervals(document.getElementById("chart-intervals"), job.points, job.best?.point, label);
}

const interval = (i) => (i ? `${pct(i[0])} – ${pct(i[1])}` : "–");

function sortValue(trial, key) {
  if (key === "params") return params(trial.params);
  return trial[key] ?? -Infinity; // trials without a value sort last when descending
}

function renderTable(job) {
  const { key, desc } = state.sort;
  const rows = [...job.trials].sort((a, b) => {
    const [va, vb] = [sortValue(a, key), sortValue(b, key)];
    const order = va < vb ? -1 : va > vb ? 1 : a.index - b.index;
    return desc ? -order : order;
  });
  const bestId = job.best?.trial_id;
  document.querySelector("#trials tbody").replaceChildren(
    ...rows.map((t) =>
      h(
        "tr",
        { class: [t.id === bestId && "best", `status-row-${t.status}`].filter(Boolean).join(" "), dataset: { trialId: t.id } },
        h("td", {}, h("span", { class: `swatch ${t.status === "pruned" ? "pruned" : ""}`, dataset: { color: colorFor(t.index) } })),
        h("td", { class: "num" }, t.index),
        h("td", {}, params(t.params)),
        h("td", {}, statusBadge(t.status)),
        h("td", { class: "num" }, `${t.epoch}/${t.epochs}`),
        h("td", { class: "num" }, pct(t.val_accuracy)),
        h("td", { class: "num" }, interval(t.val_interval), t.tied_with_best ? h("span", { class: "tie-mark", title: "tied with the best" }, " ≈") : ""),
        h("td", { class: "num" }, pct(t.test_accuracy)),
        h("td", { class: "num" }, num(t.train_loss)),
        h("td", { class: "num" }, t.attempts),
        h("td", { class: "error-cell", title: t.error || "" }, t.error || ""),
      ),
    ),
  );
  for (const swatch of document.querySelectorAll("#trials .swatch")) swatch.style.background = swatch.dataset.color;
  for (const th of document.querySelectorAll("#trials th[data-key]")) {
    th.classList.toggle("sorted", th.dataset.key === key);
    th.classList.toggle("desc", th.dataset.key === key && desc);
  }
}

function highlight(trialId) {
  for (const el of document.querySelectorAll(".trial-line, #trials tbody tr")) {
    el.classList.toggle("highlight", trialId !== null && el.dataset.trialId === String(trialId));
  }
  document.body.classList.toggle("highlighting", trialId !== null);
}

function wireEvents() {
  for (const th of document.querySelectorAll("#trials th[data-key]")) {
    th.addEventListener("click", () => {
      const key = th.dataset.key;
      state.sort = { key, desc: state.sort.key === key ? !state.sort.desc : key !== "index" && key !== "params" };
      if (state.job) renderTable(state.job);
    });
  }
  const hoverTarget = (event) => event.target.closest("[data-trial-id]")?.dataset.trialId ?? null;
  for (const area of [document.querySelector("#trials tbody"), ...document.querySelectorAll(".line-chart")]) {
    area.addEventListener("mouseover", (event) => highlight(hoverTarget(event)));
    area.addEventListener("mouseleave", () => highlight(null));
  }
  document.getElementById("cancel").addEventListener("click", cancelJob);
  for (const name of ["trials", "history"]) {
    const link = document.getElementById(`${name}-csv`);
    link.href = `/jobs/${jobId}/${name}.csv`;
    link.addEventListener("click", downloadCsv);
  }
}

/** The CSV links go through api(), so they carry the API key when one is set. */
async function downloadCsv(event) {
  event.preventDefault();
  const link = event.currentTarget;
  try {
    const blob = await api(link.getAttribute("href"), { raw: true });
    const url = URL.createObjectURL(blob);
    const save = h("a", { href: url, download: `job-${jobId}-${link.textContent}` });
    save.click();
    URL.revokeObjectURL(url);
  } catch (error) {
    showError(error instanceof ApiError ? error : new Error(`download failed: ${error}`));
  }
}

async function cancelJob() {
  if (!confirm(`Cancel job ${jobId}? Queued trials are cancelled now, running ones at their next epoch.`)) return;
  const button = document.getElementById("cancel");
  button.disabled = true;
  try {
    await api(`/jobs/${jobId}/cancel`, { method: "POST" });
    state.historyKey = "";
    await tick();
  } catch (error) {
    showError(error instanceof ApiError ? error : new Error(`cancel failed: ${error}`));
  } finally {
    button.disabled = false;
  }
}

wireEvents();
poll(tick, POLL_MS);
