// The queue: the tenant's newest jobs and batches, live. The list comes over the tenant's event
// stream (again each time one of its jobs starts or ends), and the running jobs' own streams
// bring their stages and render steps; nothing is polled. Cancel what runs, retry what failed.

import { call } from "./api.js";
import { followJob, followJobList } from "./events.js";
import {
  abortsWith, BATCH_FINISHING_MS, errorLine, h, latestOnly, say, sleep, statusWord,
} from "./ui.js";

// Running jobs followed step by step at once. Each is one of the tenant's event streams, which
// RESTYLE_TENANT_MAX_STREAMS bounds, and one of the few connections a browser opens to a host
// (with the list's own stream, three here). The others show their state as the list last
// changed.
const FOLLOWED = 2;

export async function queuePage(container, { signal } = {}) {
  const problem = errorLine();
  const jobs = h("table", { class: "queue", "aria-label": "Your jobs" },
    h("thead", {}, h("tr", {}, ["Job", "Pipeline", "Status", "Started", ""].map(
      (title) => h("th", { text: title })))), h("tbody"));
  const batches = h("ul", { class: "batches", "aria-label": "Your batches" });
  container.append(problem, h("h3", { text: "Jobs" }), jobs, h("h3", { text: "Batches" }), batches);
  let listed = [];
  const states = new Map(); // job id -> its latest state, for jobs still running
  const followed = new Map(); // job id -> what stops its stream

  const drawJobs = () => {
    const body = jobs.tBodies[0];
    const kept = new Map([...body.rows].map((row) => [row.dataset.job, row]));
    // A row that shows the same as before is kept as it is (a keyboard user's focus with it);
    // only rows that changed are drawn again.
    const wanted = listed.filter((job) => !job.batch_id).map((job) => {
      const row = jobRow(job, states.get(job.job_id), problem);
      const before = kept.get(job.job_id);
      return before && before.dataset.shows === row.dataset.shows ? before : row;
    });
    for (const row of [...body.rows]) if (!wanted.includes(row)) row.remove();
    wanted.forEach((row, n) => {
      if (body.rows[n] !== row) body.insertBefore(row, body.rows[n] || null);
    });
  };

  const readOnce = async (jobId) => {
    try { states.set(jobId, await call(`jobs/${encodeURIComponent(jobId)}`)); }
    catch { /* gone between the list and now: the list's next change shows how it ended */ }
  };
  const follow = (jobId) => {
    const stop = abortsWith(signal);
    followed.set(jobId, stop);
    followJob(jobId, (state) => {
      if (!state) return;
      states.set(jobId, state);
      drawJobs();
    }, { signal: stop.signal, onBusy: () => { // the tenant's streams are all open elsewhere
      followed.delete(jobId);
      readOnce(jobId).then(drawJobs);
      return true;
    } });
  };

  const onJobs = async (jobsNow) => {
    if (signal?.aborted) return;
    listed = jobsNow;
    // (A batch's images are shown as their batch's counts, not as rows.)
    const active = listed.filter((job) => job.status === "active" && !job.batch_id);
    // A job the list says has ended is drawn from the list (its cause, whether to retry).
    const activeIds = new Set(active.map((job) => job.job_id));
    for (const id of [...states.keys()]) if (!activeIds.has(id)) states.delete(id);
    for (const [id, stop] of followed) {
      if (!activeIds.has(id)) {
        stop.abort();
        followed.delete(id);
      }
    }
    const unfollowed = active.filter((job) => !followed.has(job.job_id));
    for (const job of unfollowed.splice(0, FOLLOWED - followed.size)) follow(job.job_id);
    await Promise.all(unfollowed.map((job) => readOnce(job.job_id)));
    drawJobs();
    await drawBatches(batches, listed, problem, signal);
  };

  // One list drawn at a time, the newest: a slow draw is never overwritten by an older list,
  // and a burst of changes is one draw.
  const draw = latestOnly(onJobs, (error) => say(problem, error));
  let waiting = false; // for a free stream (said on the page until the stream delivers)
  followJobList((jobsNow) => {
    if (waiting) say(problem);
    waiting = false;
    draw(jobsNow);
  }, {
    signal,
    onRefused: (message) => say(problem, { message: message || "The job list was refused." }),
    onBusy: () => {
      waiting = true;
      say(problem, { message: "Live updates wait for a free stream: this tenant has all its " +
                               "streams open (RESTYLE_TENANT_MAX_STREAMS). The list is as of now." });
      call("jobs?limit=50").then(({ jobs: now }) => draw(now), (error) => say(problem, error));
      return false; // tried again after the answer's Retry-After
    },
  });
}

function jobRow(job, state, problem) {
  const status = job.status === "active" ? (state?.status || "queued") : job.status;
  const error = state?.error || job.error;
  const cause = error && `${error.message} (${error.code})`;
  // What follows an action comes over the streams (the job ends, or a retry starts).
  const action = (label, run) => h("button", { type: "button", class: "quiet", text: label,
    onclick: () => run().catch((error) => say(problem, error)) });
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

// The batches of the listed jobs, read when the list changes (their counts move as their
// images end); a batch whose images have all ended is read again until it has finished.
async function drawBatches(list, listed, problem, signal) {
  const batchIds = [...new Set(listed.map((job) => job.batch_id).filter(Boolean))];
  list.replaceChildren(...await Promise.all(batchIds.map((id) => batchLine(id, problem))));
  if (!batchIds.length) list.append(h("li", { class: "hint", text: "No batches yet." }));
  for (const id of batchIds) {
    const line = list.querySelector(`li[data-batch="${CSS.escape(id)}"]`);
    const imagesRunning = listed.some((job) => job.batch_id === id && job.status === "active");
    if (line?.dataset.status === "running" && !imagesRunning) finishing(id, line, problem, signal);
  }
}

async function finishing(batchId, line, problem, signal) {
  for (let n = 0; ; n++) {
    // The last wait over and over, while the batch is shown.
    await sleep(BATCH_FINISHING_MS[Math.min(n, BATCH_FINISHING_MS.length - 1)]);
    if (signal?.aborted || !line.isConnected) return;
    const now = await batchLine(batchId, problem);
    line.replaceWith(now);
    line = now;
    if (now.dataset.status !== "running") return;
  }
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
