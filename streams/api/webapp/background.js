// Background replacement: several photos; for each, the labels the detector finds offered as
// chips to keep or drop (what the mask keeps); a prompt for the new background; then the
// batch followed image by image, each with its status, its cause when it failed and its
// result, and the batch's report.

import { call, fileUrl, upload } from "./api.js";
import { followJobList } from "./events.js";
import {
  abortsWith, BATCH_FINISHING_MS, errorLine, field, filled, h, image, latestOnly, localThumb,
  numberOrNothing, say, sleep, statusWord,
} from "./ui.js";

// A followed batch is read again every SAFETY_NET_MS whatever the stream says.
const SAFETY_NET_MS = 15000;

export async function backgroundPage(container, { signal } = {}) {
  const photos = h("input", { type: "file", accept: "image/*", multiple: true, name: "photos" });
  const picked = h("div", { class: "picked", "aria-live": "polite" });
  let rows = [];
  photos.addEventListener("change", () => {
    rows = [...photos.files].map(photoRow);
    picked.replaceChildren(...rows.map((row) => row.element));
  });
  const prompt = h("input", { type: "text", name: "prompt", required: true,
                              placeholder: "a sunlit beach at golden hour" });
  const negative = h("input", { type: "text", name: "negative_prompt" });
  const mode = h("select", { name: "mode" },
                 h("option", { value: "DEFAULT", text: "DEFAULT: edges blend in" }),
                 h("option", { value: "PRECISE", text: "PRECISE: kept pixels untouched" }));
  const steps = h("input", { type: "number", min: 1, max: 150, name: "steps" });
  const seed = h("input", { type: "number", min: 0, name: "seed" });
  const problem = errorLine();
  const submit = h("button", { type: "submit", text: "Replace the backgrounds" });
  const batchView = h("div", { class: "live" });
  const form = h("form", { class: "card", "aria-label": "Background replacement" },
    field("Photos", photos, "One or more photos; for each, choose what to keep."), picked,
    field("New background", prompt), field("Avoid (negative prompt)", negative),
    field("Mode", mode),
    h("details", {}, h("summary", { text: "More settings" }), field("Steps", steps),
      field("Seed", seed)),
    submit, problem);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    say(problem);
    if (!rows.length) return say(problem, { message: "Choose at least one photo." });
    submit.disabled = true;
    try {
      const stored = await upload(rows.map((row) => row.file));
      const images = stored.map((file, n) => filled({
        uri: file.uri, name: rows[n].file.name, mask_prompt: rows[n].kept().join(", ") }));
      const body = filled({ images, prompt: prompt.value, negative_prompt: negative.value,
                            mode: mode.value,
                            params: filled({ steps: numberOrNothing(steps.value),
                                             seed: numberOrNothing(seed.value) }) });
      const { batch_id: batchId } = await call("batches", { method: "POST", json: body });
      await followBatch(batchId, batchView, rows, signal);
    } catch (error) {
      say(problem, error);
    } finally {
      submit.disabled = false;
    }
  });
  container.append(form, batchView);
}

// One chosen photo: its thumbnail and its label chips (all kept until dropped).
function photoRow(file) {
  const chips = h("div", { class: "chips", role: "group", "aria-label": `Keep in ${file.name}` },
                  h("span", { class: "hint", text: "Finding objects…" }));
  const element = h("div", { class: "photo-row", "data-name": file.name },
    localThumb(file),
    h("div", {}, h("strong", { text: file.name }), chips));
  const form = new FormData();
  form.append("image", file, file.name);
  call("labels", { method: "POST", form }).then(({ labels }) => {
    const names = [...new Set(labels.map((found) => found.label))];
    if (!names.length) {
      chips.replaceChildren(h("span", { class: "hint",
        text: "No objects found: the main subject will be kept." }));
      return;
    }
    chips.replaceChildren(...names.map((name) => {
      const best = Math.max(...labels.filter((l) => l.label === name).map((l) => l.confidence));
      const chip = h("button", { type: "button", class: "chip", "aria-pressed": "true",
                                 "data-label": name, text: `${name} ${(best * 100).toFixed(0)}%`,
        onclick: () => chip.setAttribute("aria-pressed",
                                         chip.getAttribute("aria-pressed") === "true" ? "false" : "true") });
      return chip;
    }));
  }, (error) => {
    chips.replaceChildren(h("span", { class: "error", text: `Cannot read this photo: ${error.message}` }));
  });
  const kept = () => [...chips.querySelectorAll(".chip[aria-pressed=true]")]
    .map((chip) => chip.dataset.label);
  return { file, element, kept };
}

// The batch is read again whenever the set of its images being worked on changes (the
// tenant's stream of running jobs says when: an image started or ended), then, once none is,
// until it has finished (its report is being written). A slow re-read is the safety net for a
// stream that cannot be opened (the tenant's streams all in use).
async function followBatch(batchId, view, rows, signal) {
  const heading = h("h3", { text: `Batch ${batchId}` });
  const summary = h("p", { role: "status", "aria-live": "polite" });
  const table = h("table", { class: "batch" },
    h("thead", {}, h("tr", {}, ["Photo", "Status", "Result"].map((t) => h("th", { text: t })))),
    h("tbody"));
  const cancel = h("button", { type: "button", class: "quiet", text: "Cancel the batch",
    onclick: () => call(`batches/${encodeURIComponent(batchId)}`, { method: "DELETE" })
      .catch((error) => say(problem, error)) });
  const problem = errorLine();
  const report = h("p", { class: "report" });
  view.replaceChildren(h("section", { class: "card", "data-batch": batchId, "aria-label": "Batch" },
    heading, summary, cancel, table, report, problem));
  const shown = new Map();
  const read = async () => { // true once the batch has finished
    let batch;
    try {
      batch = await call(`batches/${encodeURIComponent(batchId)}?images=true`);
    } catch (error) {
      say(problem, error);
      return false;
    }
    const counts = Object.entries(batch.counts).map(([k, v]) => `${v} ${k}`).join(", ");
    const writing = batch.reporting ? ", writing its report" : "";
    summary.textContent = `${statusWord(batch.status)}${writing} — ${counts}`;
    for (const line of batch.images || []) await showImage(line, table.tBodies[0], shown, rows);
    // Set after the rows: a reader that waits for the batch's end then sees every image's
    // line as it ended (showing a result waits for its thumbnails); and not an end while the
    // report is being written, so that it then sees the report's links too.
    view.querySelector("section").dataset.status = batch.reporting ? "reporting" : batch.status;
    if (batch.status === "running" || batch.reporting) return false;
    cancel.remove();
    if (batch.error) say(problem, { message: batch.error.message });
    // Read through the API (GET /files), like every image here.
    report.replaceChildren("Report: ", ...Object.entries(batch.report_uris || {}).flatMap(
      ([kind, uri], n) => [n ? " · " : "", h("a", {
        href: "#", "data-uri": uri, download: `${batchId}.${kind}`,
        text: kind.toUpperCase(), onclick: reportClick })]));
    return true;
  };
  if (await read() || signal?.aborted) return;
  const stop = abortsWith(signal);
  const stopped = new Promise((resolve) => stop.signal.addEventListener("abort", resolve,
                                                                         { once: true }));
  // The newest reason to read only (a burst of list changes is one read); settling: none of
  // its images is being worked on, so it is read until it has finished.
  const reread = latestOnly(async (settling) => {
    let finished = !stop.signal.aborted && await read();
    for (const wait of settling ? BATCH_FINISHING_MS : []) {
      if (finished || stop.signal.aborted) break;
      await Promise.race([sleep(wait), stopped]);
      finished = !stop.signal.aborted && await read();
    }
    if (finished) stop.abort();
  }, (error) => say(problem, error));
  let working = null;
  followJobList((running) => {
    const mine = running.filter((job) => job.batch_id === batchId).map((job) => job.job_id);
    if (mine.sort().join() === working) return;
    working = mine.join();
    reread(!mine.length);
  }, { signal: stop.signal, active: true, limit: 200,
       onRefused: (message) => say(problem, { message: message || "The job list was refused." }) });
  while (!stop.signal.aborted) {
    await Promise.race([sleep(SAFETY_NET_MS), stopped]);
    if (!stop.signal.aborted) reread(false);
  }
}

async function reportClick(event) {
  const link = event.currentTarget;
  if (!link.href.startsWith("blob:")) {
    event.preventDefault();
    link.href = await fileUrl(link.dataset.uri);
    link.click();
  }
}

// An image's cause names it by its storage URI (what the API's callers know it by); here it
// is the photo the user chose, so it is named by its file name.
function inWords(line) {
  return line.image ? line.cause.replaceAll(line.image, line.name || "this photo") : line.cause;
}

async function showImage(line, body, shown, rows) {
  const key = `${line.job_id}:${line.status}`;
  if (shown.get(line.job_id) === key) return;
  shown.set(line.job_id, key);
  let row = body.querySelector(`tr[data-job="${CSS.escape(line.job_id)}"]`);
  if (!row) {
    const original = rows.find((r) => r.file.name === line.name);
    row = h("tr", { "data-job": line.job_id },
      h("td", {}, original ? localThumb(original.file) : null,
        h("div", { text: line.name || line.job_id })),
      h("td", { class: "state" }), h("td", { class: "made" }));
    body.append(row);
  }
  row.dataset.status = line.status;
  const state = row.querySelector(".state");
  state.replaceChildren(h("strong", { text: statusWord(line.status) }),
    ...(line.cause ? [h("p", { class: "error", text: `${inWords(line)} (${line.error})` })] : []));
  const made = row.querySelector(".made");
  if (line.outputs?.length && !made.childElementCount) {
    made.append(...await Promise.all(line.outputs.map((uri, n) =>
      image(uri, `${line.name} with its new background ${n + 1}`, { class: "thumb" }))));
  }
}
