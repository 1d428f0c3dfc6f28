// The predict page: dropped images go to POST /predict as multipart `file` parts, in one request.

import { api, h, pct, showError } from "./api.js";

const drop = document.getElementById("drop");
const input = document.getElementById("files");

async function classify(files) {
  const images = [...files].filter((f) => ["image/png", "image/jpeg"].includes(f.type));
  if (!images.length) {
    showError(new Error("drop PNG or JPEG files"));
    return;
  }
  const form = new FormData();
  for (const file of images) form.append("file", file, file.name);
  const query = new URLSearchParams({
    resize: String(document.getElementById("resize").checked),
    tta: document.getElementById("tta").checked ? "flip" : "none",
  });
  const modelId = document.getElementById("model-id").value;
  if (modelId) query.set("model_id", modelId);
  showError(null);
  document.getElementById("results").setAttribute("aria-busy", "true");
  try {
    const answer = await api(`/predict?${query}`, { method: "POST", body: form });
    render(images, answer);
  } catch (error) {
    showError(error);
  } finally {
    document.getElementById("results").removeAttribute("aria-busy");
  }
}

function render(files, answer) {
  const m = answer.model;
  document.getElementById("model").textContent =
    `model ${m.id} (job ${m.job_id}, trial ${m.trial_id}): val ${pct(m.val_accuracy)}, test ${pct(m.test_accuracy)}`;
  const cards = answer.predictions.map((p, i) => {
    const bars = Object.entries(p.probabilities)
      .sort((a, b) => b[1] - a[1])
      .map(([label, prob]) =>
        h(
          "div",
          { class: `bar-row ${label === p.label ? "top" : ""}` },
          h("span", { class: "bar-label" }, label),
          h("span", { class: "bar" }, h("span", { class: "bar-fill", dataset: { share: prob } })),
          h("span", { class: "num" }, pct(prob)),
        ),
      );
    return h(
      "article",
      { class: "card prediction" },
      h("img", { src: URL.createObjectURL(files[i]), alt: files[i].name, class: "thumb" }),
      h("h2", {}, `${p.label} · ${pct(p.confidence)}`),
      h("p", { class: "muted" }, files[i].name),
      ...bars,
    );
  });
  document.getElementById("results").replaceChildren(...cards);
  for (const fill of document.querySelectorAll(".bar-fill")) fill.style.width = `${100 * fill.dataset.share}%`;
}

input.addEventListener("change", () => classify(input.files));
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
}
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  classify(event.dataTransfer.files);
});
