// Small building blocks shared by the pages: an element builder, labelled fields, error lines
// and the live view of one job (its stages, its render steps with a sharpening preview, and
// its cause when it fails).

import { call, fileUrl, productImageUrl } from "./api.js";
import { followJob } from "./events.js";

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else if (name === "text") element.textContent = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

// run(value) for the newest value only: while one run is under way, later values replace one
// another and the newest runs next (a burst of changes is one redraw, never a backlog).
export function latestOnly(run, onError) {
  let pending = null, running = false;
  return (value) => {
    pending = { value };
    if (running) return;
    running = true;
    (async () => {
      while (pending) {
        const next = pending.value;
        pending = null;
        try { await run(next); } catch (error) { onError?.(error); }
      }
      running = false;
    })();
  };
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Once none of a batch's images is being worked on, its report is being written: the batch is
// read again after these waits until it has finished (the queue and the background pages).
export const BATCH_FINISHING_MS = [300, 700, 1500, 3000, 6000];

// An AbortController that is aborted with parent too (a page's streams end when the page is
// left), at once if parent already is.
export function abortsWith(parent) {
  const controller = new AbortController();
  if (parent?.aborted) controller.abort();
  parent?.addEventListener("abort", () => controller.abort(),
                           { once: true, signal: controller.signal });
  return controller;
}

let fieldCount = 0;
// A labelled control: label text, then the input element (its id is made here).
export function field(label, control, hint) {
  control.id ||= `field-${++fieldCount}`;
  const hintId = hint ? `${control.id}-hint` : null;
  if (hintId) control.setAttribute("aria-describedby", hintId);
  const element = h("div", { class: "field" }, h("label", { for: control.id, text: label }),
                    control, hint ? h("p", { class: "hint", id: hintId, text: hint }) : null);
  if (control.type === "file") acceptDrops(element, control);
  return element;
}

// A file field also takes images dropped anywhere on it, as if chosen (its change event
// fires, so the page reacts as it does to the chooser).
function acceptDrops(element, input) {
  element.classList.add("drop");
  element.addEventListener("dragover", (event) => {
    event.preventDefault();
    element.classList.add("over");
  });
  element.addEventListener("dragleave", () => element.classList.remove("over"));
  element.addEventListener("drop", (event) => {
    event.preventDefault();
    element.classList.remove("over");
    const images = [...event.dataTransfer.files].filter((file) => file.type.startsWith("image/"));
    if (!images.length) return;
    const chosen = new DataTransfer();
    (input.multiple ? images : images.slice(0, 1)).forEach((file) => chosen.items.add(file));
    input.files = chosen.files;
    input.dispatchEvent(new Event("change", { bubbles: true }));
  });
}

export function errorLine(message = "") {
  return h("p", { class: "error", role: "alert", text: message });
}

export function say(line, error) {
  line.textContent = error ? (error.message || String(error)) : "";
}

// The thumbnail of a file chosen on this computer; one the browser cannot show (not an image,
// or a format it does not draw) is a "no preview" box with the file's name, not a broken icon.
export function localThumb(file) {
  const thumb = h("img", { src: URL.createObjectURL(file), alt: file.name, class: "thumb" });
  thumb.addEventListener("error", () => thumb.replaceWith(
    h("span", { class: "thumb none", role: "img", "aria-label": `${file.name}: no preview`,
                text: "no preview" })));
  return thumb;
}

export async function image(uri, alt, attributes = {}) {
  return loadedImage(fileUrl(uri), alt, attributes);
}

export async function productImage(productId, alt, attributes = {}) {
  return loadedImage(productImageUrl(productId), alt, attributes);
}

async function loadedImage(source, alt, attributes) {
  const element = h("img", { alt, ...attributes });
  try {
    element.src = await source;
  } catch (error) {
    element.alt = `${alt} (not available: ${error.message})`;
  }
  return element;
}

export function numberOrNothing(value) {
  return value === "" || value === undefined ? undefined : Number(value);
}

// Only the fields a user filled in: the API fills in the rest from its settings.
export function filled(object) {
  return Object.fromEntries(Object.entries(object).filter(([, value]) =>
    value !== undefined && value !== "" && !(typeof value === "number" && Number.isNaN(value))));
}

const STAGES = {
  room_makeover: ["queued", "analyzing", "queued_for_gpu", "generating", "re-analyzing", "done"],
  condition: ["queued", "analyzing", "queued_for_gpu", "generating", "done"],
  avatar_train: ["queued", "analyzing", "queued_for_gpu", "training", "done"],
  avatar_generate: ["queued", "queued_for_gpu", "generating", "done"],
};
const WORDS = {
  queued: "Queued", analyzing: "Analysing", queued_for_gpu: "Waiting for a GPU",
  generating: "Rendering", training: "Training", "re-analyzing": "Finding products",
  done: "Done", failed: "Failed", cancelled: "Cancelled",
};
export const statusWord = (status) => WORDS[status] || status;

// The live view of a job: resolves with its final state. onProgress(state) sees every event.
export function jobView(jobId, pipeline, { onProgress } = {}) {
  const stages = STAGES[pipeline] || ["queued", "generating", "done"];
  const steps = h("ol", { class: "stages", "aria-label": "Stages" },
                  stages.map((stage) => h("li", { "data-stage": stage, text: statusWord(stage) })));
  const status = h("p", { class: "status", role: "status", "aria-live": "polite",
                          text: `Job ${jobId}: submitted` });
  const bar = h("progress", { max: 1, value: 0, "aria-label": "Render progress" });
  const preview = h("img", { class: "preview", alt: "Preview of the image so far", hidden: true });
  const cause = errorLine();
  const cancel = h("button", { type: "button", class: "quiet", text: "Cancel",
    onclick: async () => {
      try { await call(`jobs/${encodeURIComponent(jobId)}`, { method: "DELETE" }); }
      catch (error) { say(cause, error); }
    } });
  const element = h("div", { class: "job", "data-job": jobId }, status, steps,
                    h("div", { class: "progress-row" }, bar, cancel), preview, cause);
  const finished = new Promise((resolve) => {
    followJob(jobId, (state, missing) => {
      if (!state) {
        say(cause, { message: missing });
        resolve(null);
        return;
      }
      element.dataset.status = state.status;
      const reached = stages.indexOf(state.status);
      steps.querySelectorAll("li").forEach((item, n) => {
        item.classList.toggle("passed", reached >= 0 && n < reached);
        item.classList.toggle("current", n === reached);
      });
      let line = `Job ${jobId}: ${statusWord(state.status)}`;
      if (state.queue_position !== undefined && state.queue_position !== null) {
        line += ` (${state.queue_position} ahead)`;
      }
      const progress = state.progress;
      if (progress) {
        bar.max = progress.total;
        bar.value = progress.step;
        line += ` — step ${progress.step} of ${progress.total}`;
        if (progress.preview) {
          preview.src = progress.preview;
          preview.hidden = false;
        }
      }
      if (state.status === "done") bar.value = bar.max;
      status.textContent = line;
      if (state.error) {
        cause.textContent = `${state.status === "cancelled" ? "Cancelled" : "Failed"}: ` +
          `${state.error.message} (${state.error.code})`;
      }
      if (["done", "failed", "cancelled"].includes(state.status)) {
        cancel.remove();
        if (state.status === "done") preview.hidden = true;
        resolve(state);
      }
      onProgress?.(state);
    });
  });
  return { element, finished };
}

// A download link for a stored file.
export async function downloadLink(uri, name) {
  const link = h("a", { class: "button", download: name, text: `Download ${name}` });
  try { link.href = await fileUrl(uri); } catch { link.remove(); }
  return link;
}
