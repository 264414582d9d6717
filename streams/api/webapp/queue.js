// The queue: the tenant's newest jobs and batches with their live status; cancel what runs,
// retry what failed.

import { call } from "./api.js";
import { errorLine, h, say, statusWord } from "./ui.js";

const REFRESH_MS = 2000;

export async function queuePage(container) {
  const problem = errorLine();
  const jobs = h("table", { class: "queue", "aria-label": "Your jobs" },
    h("thead", {}, h("tr", {}, ["Job", "Pipeline", "Status", "Started", ""].map(
      (title) => h("th", { text: title })))), h("tbody"));
  const batches = h("ul", { class: "batches", "aria-label": "Your batches" });
  container.append(problem, h("h3", { text: "Jobs" }), jobs, h("h3", { text: "Batches" }), batches);
  const states = new Map(); // job id -> its latest state, for jobs still running
  const refresh = async () => {
    if (!container.isConnected) return false;
    try {
      const listed = (await call("jobs?limit=50")).jobs;
      const active = listed.filter((job) => job.status === "active");
      // A job the list says has ended is drawn from the list (its cause, whether to retry).
      const activeIds = new Set(active.map((job) => job.job_id));
      for (const id of [...states.keys()]) if (!activeIds.has(id)) states.delete(id);
      await Promise.all(active.map(async (job) => {
        try { states.set(job.job_id, await call(`jobs/${encodeURIComponent(job.job_id)}`)); }
        catch { /* gone between the list and now: the next refresh shows how it ended */ }
      }));
      const body = jobs.tBodies[0];
      const kept = new Map([...body.rows].map((row) => [row.dataset.job, row]));
      // A row that shows the same as before is kept as it is (a keyboard user's focus with
      // it); only rows that changed are drawn again.
      const wanted = listed.filter((job) => !job.batch_id).map((job) => {
        const row = jobRow(job, states.get(job.job_id), problem, refresh);
        const before = kept.get(job.job_id);
        return before && before.dataset.shows === row.dataset.shows ? before : row;
      });
      for (const row of [...body.rows]) if (!wanted.includes(row)) row.remove();
      wanted.forEach((row, n) => {
        if (body.rows[n] !== row) body.insertBefore(row, body.rows[n] || null);
      });
      const batchIds = [...new Set(listed.map((job) => job.batch_id).filter(Boolean))];
      batches.replaceChildren(...await Promise.all(batchIds.map((id) => batchLine(id, problem))));
      if (!batchIds.length) batches.append(h("li", { class: "hint", text: "No batches yet." }));
    } catch (error) {
      say(problem, error);
    }
    return true;
  };
  const loop = async () => {
    if (await refresh()) setTimeout(loop, REFRESH_MS);
  };
  await loop();
}

function jobRow(job, state, problem, refresh) {
  const status = job.status === "active" ? (state?.status || "queued") : job.status;
  const error = state?.error || job.error;
  const cause = error && `${error.message} (${error.code})`;
  const action = (label, run) => h("button", { type: "button", class: "quiet", text: label,
    onclick: async () => {
      try { await run(); await refresh(); } catch (error) { say(problem, error); }
    } });
  const path = `jobs/${encodeURIComponent(job.job_id)}`;
  const actions = [];
  // The list may still say active for a moment after the job's own state has ended.
  const running = job.status === "active" && !["done", "failed", "cancelled"].includes(status);
  if (running) actions.push(action("Cancel", () => call(path, { method: "DELETE" })));
  if (job.retryable) {
    actions.push(action("Retry", () => call(`${path}/retry`, { method: "POST" })));
  }
  const progress = state?.progress ? ` (step ${state.progress.step} of ${state.progress.total})` : "";
  // What the row shows, its buttons included: a row showing the same is kept as it is.
  const shows = `${status}|${running}|${job.retryable}|${progress}|${cause || ""}`;
  return h("tr", { "data-job": job.job_id, "data-status": status, "data-shows": shows },
    h("td", { text: job.job_id }), h("td", { text: job.pipeline || "" }),
    h("td", {}, h("strong", { text: statusWord(status) + progress }),
      cause ? h("p", { class: "error", text: cause }) : null),
    h("td", { text: new Date(job.started_at * 1000).toLocaleString() }),
    h("td", {}, actions));
}

async function batchLine(batchId, problem) {
  try {
    const batch = await call(`batches/${encodeURIComponent(batchId)}`);
    const counts = Object.entries(batch.counts).map(([k, v]) => `${v} ${k}`).join(", ");
    const cancel = batch.status === "running" ? h("button", { type: "button", class: "quiet",
      text: "Cancel", onclick: () => call(`batches/${encodeURIComponent(batchId)}`,
                                          { method: "DELETE" }).catch((e) => say(problem, e)) })
      : null;
    return h("li", { "data-batch": batchId, "data-status": batch.status },
      h("strong", { text: batchId }), ` ${statusWord(batch.status)}: ${counts} `, cancel);
  } catch (error) {
    return h("li", { "data-batch": batchId, text: `${batchId}: ${error.message}` });
  }
}
