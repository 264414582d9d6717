// Server-Sent Events (a job's, the tenant's list of jobs), read with fetch() rather than
// EventSource: EventSource cannot send the Authorization header. The parser follows the WHATWG
// event-stream format (event:, data:, comment lines, a blank line ends an event); a dropped
// stream is opened again: every event carries the whole state (the job's, the list), so
// nothing is lost by missing one.

import { session, url } from "./api.js";

const RETRY_MS = 1500;

export function followJob(jobId, onState, { signal, onBusy } = {}) {
  return follow(`jobs/${encodeURIComponent(jobId)}/events`, (event) => {
    const state = JSON.parse(event.data);
    onState(state);
    return ["done", "failed", "cancelled"].includes(state.status);
  }, (message) => onState(null, message || `job ${jobId} is not visible to this key`),
  { signal, onBusy });
}

// The tenant's newest jobs, again each time one starts or ends, until signal aborts (active:
// only those still running).
export function followJobList(onJobs, { signal, limit = 50, active = false, onRefused,
                                        onBusy } = {}) {
  return follow(`tenant/events?limit=${limit}${active ? "&active=true" : ""}`, (event) => {
    onJobs(JSON.parse(event.data).jobs);
    return false;
  }, onRefused, { signal, onBusy });
}

// Read the stream at path, handing each event to onEvent until it returns true; a stream that
// drops is opened again. A refusal (400, 401, 403, 404) goes to onRefused and ends it. When the
// tenant has all its streams open (429), onBusy() is asked whether to give up; if not, the
// stream is tried again once the answer's Retry-After has passed.
function follow(path, onEvent, onRefused, { signal, onBusy } = {}) {
  let ended = false;
  const run = async () => {
    while (!ended && !signal?.aborted) {
      let wait = RETRY_MS;
      try {
        const response = await fetch(url(path), {
          headers: { Authorization: `Bearer ${session.key}`, Accept: "text/event-stream" },
          signal,
        });
        if ([400, 401, 403, 404].includes(response.status)) {
          const body = await response.json().catch(() => ({}));
          onRefused?.(body.error?.message);
          return;
        }
        if (response.status === 429) {
          if (onBusy?.()) return;
          wait = 1000 * (Number(response.headers.get("Retry-After")) || RETRY_MS / 1000);
          throw new Error("too many streams");
        }
        if (!response.ok || !response.body) throw new Error(`status ${response.status}`);
        for await (const event of parse(response.body)) {
          if (onEvent(event)) {
            ended = true;
            return;
          }
        }
      } catch (error) {
        if (signal?.aborted) return;
      }
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  };
  return run();
}

async function* parse(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", type = "message", data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let newline;
    while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = buffer.slice(0, newline);
      buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
      if (line === "") {
        if (data.length) yield { type, data: data.join("\n") };
        type = "message";
        data = [];
      } else if (!line.startsWith(":")) {
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") type = text;
        else if (field === "data") data.push(text);
      }
    }
  }
}
