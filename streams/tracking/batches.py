"""The batch tracker: folds restyle.batch-events into the batches table; when a batch ends it
writes the status report (JSON and CSV) to storage, publishes `batch.completed` on
restyle.notifications and hands the webhook delivery (if any) to the webhook stage."""
from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import time

from schemas import JobEventKind, StageFailure
from schemas.background import (
    BackgroundJob,
    BatchEvent,
    BatchEventKind,
    BatchNotification,
    BatchState,
    ImageOutcome,
    WebhookDelivery,
)
from schemas.uris import join_uri
from streams.core.pauses import OutOfGroup
from streams.core.runtime import Runtime
from streams.tracking.batchstate import apply_batch_event, cancel_waiting, summary, to_release
from streams.tracking.tables import Tables

log = logging.getLogger("restyle.batches")

INDEX = "#index"
# Failures spelled out in a notification (the report has them all).
MAX_LISTED_FAILURES = 50
CSV_COLUMNS = ["name", "job_id", "image", "status", "error", "cause", "outputs", "seed",
               "mask_ms", "render_ms", "finish_ms"]


def register(rt: Runtime, tables: Tables) -> None:
    batches, images = tables.batches, tables.batch_images

    async def track(event: BatchEvent) -> None:
        key = event.batch_id.encode()
        state = lookup(tables, event.batch_id)
        previous = None
        if event.outcome is not None:
            stored = images.get(f"{event.batch_id}/{event.outcome.job_id}".encode())
            previous = ImageOutcome.model_validate_json(stored) if stored else None
        transition = apply_batch_event(state, previous, event, rt.settings.tolerated_failure_pct)
        listing = event.kind in (BatchEventKind.OPENED, BatchEventKind.ENTRIES)
        for entry in transition.entries:
            entry_key = f"{event.batch_id}/{entry.job_id}".encode()
            if listing and images.get(entry_key) is not None:
                continue  # a redelivered listing must not make a finished image pending again
            images[entry_key] = entry.model_dump_json().encode()
        if transition.index:
            for image in event.images:
                if image.job is not None:
                    images[job_key(event.batch_id, image.job_id)] = \
                        image.job.model_dump_json().encode()
            index_key = f"{event.batch_id}/{INDEX}".encode()
            known = json.loads(images.get(index_key) or b"[]")
            listed = set(known)  # a redelivered chunk is listed once
            images[index_key] = json.dumps(
                known + [job_id for job_id in transition.index if job_id not in listed]).encode()
        new = transition.state
        if new is None:
            return
        # The counts are stored before any job is handed on: whatever happens while releasing,
        # an outcome is never counted and then lost.
        batches[key] = new.model_dump_json().encode()
        finished = transition.finished
        if new.cancelled_by is not None and not new.finished:
            new, finished = await stop(new, cancelling=event.kind is BatchEventKind.CANCEL)
            batches[key] = new.model_dump_json().encode()
        else:
            released = await release(new)
            if released is not new:  # stored again only when images were handed on
                new = released
                batches[key] = new.model_dump_json().encode()
        # Stored before the report goes out: a crash or a storage error in between leaves
        # `reporting` set, and the next event for the batch (a redelivery) reports it.
        if finished:
            await report_and_notify(rt, tables, new)
            batches[key] = new.model_copy(update={"reporting": False}).model_dump_json().encode()

    async def release(state: BatchState) -> BatchState:
        """Hand the batch's next images to the pipeline, keeping RESTYLE_BATCH_WINDOW of them
        in flight: a 5,000-image batch never stands in front of another tenant's job with
        more than that. Sent before the count is stored: a replay sends again, and the job
        tracker starts a job id once."""
        # Bounded by the batch's total first: while its window is full (most events), the
        # index, a JSON list of every job id of the batch, is not read at all.
        if not to_release(state, state.total or 0, rt.settings.batch_window):
            return state
        index = json.loads(images.get(f"{state.batch_id}/{INDEX}".encode()) or b"[]")
        positions = to_release(state, len(index), rt.settings.batch_window)
        if not positions:
            return state
        released = state.released
        for position in positions:
            stored = images.get(job_key(state.batch_id, index[position]))
            if stored is not None:  # (none: refused at expansion, it has already failed)
                try:
                    job = BackgroundJob.model_validate_json(stored)
                    await rt.job_event(job.job_id, JobEventKind.SUBMITTED, tenant=job.tenant,
                                       batch_id=state.batch_id, job=job)
                except OutOfGroup:  # the batch is its partition's new owner's
                    raise
                except Exception:  # the batch's next event releases from here again
                    log.exception("releasing image %d of batch %s failed", position,
                                  state.batch_id)
                    break
            released = position + 1
        return state.model_copy(update={"released": released})

    async def stop(state: BatchState, cancelling: bool) -> tuple[BatchState, bool]:
        """A cancelled batch: its images in the pipeline have their jobs cancelled (when the
        cancel arrives; each ends as its job does), the ones still waiting for their turn
        (and any listed later) end cancelled now. Returns the new state and whether the batch
        has ended."""
        index = json.loads(images.get(f"{state.batch_id}/{INDEX}".encode()) or b"[]")

        def entry(job_id: str) -> ImageOutcome | None:
            stored = images.get(f"{state.batch_id}/{job_id}".encode())
            return ImageOutcome.model_validate_json(stored) if stored else None

        if cancelling:
            for job_id in index[:state.released]:
                running = entry(job_id)
                if running is not None and running.status == "pending":
                    await rt.job_event(job_id, JobEventKind.CANCELLED, tenant=state.tenant,
                                       by=state.cancelled_by)
        waiting = [found for found in map(entry, index[state.released:]) if found is not None]
        transition = cancel_waiting(state, waiting, len(index), time.time())
        for cancelled in transition.entries:
            images[f"{state.batch_id}/{cancelled.job_id}".encode()] = \
                cancelled.model_dump_json().encode()
        return transition.state, transition.finished

    rt.stage_agent("batch-tracker", track, BatchEvent, topic=rt.topics.batch_events,
                   fail_jobs=False, follows_cancellations=False)


def job_key(batch_id: str, job_id: str) -> bytes:
    """Where a batch keeps an image's job until it is handed to the pipeline."""
    return f"{batch_id}/{job_id}#job".encode()


async def report_and_notify(rt: Runtime, tables: Tables, state: BatchState,
                            attempts: int = 3) -> None:
    """Write the report, publish batch.completed, hand the webhook over (all idempotent)."""
    outcomes = outcomes_of(tables, state.batch_id)
    for attempt in range(1, attempts + 1):
        try:
            state.report = await write_report(rt, state, outcomes)
            break
        except StageFailure:
            if attempt == attempts:
                raise
            await asyncio.sleep(attempt)
    notification = await notification_for(rt, state, outcomes)
    # Not from a worker stopped out of its group since it took the event (rt.send asks): the
    # batch's new owner notifies (the report above is the same whoever writes it).
    await rt.send(rt.topics.notifications, state.batch_id, notification)
    webhook = state.webhook
    url = webhook.url if webhook else rt.settings.webhook_url
    if url:
        await rt.send(rt.topics.webhooks, state.batch_id, WebhookDelivery(
            batch_id=state.batch_id, url=url,
            secret_name=webhook.secret_name if webhook else None, tenant=state.tenant,
            body=notification.model_dump(mode="json")))


def lookup(tables: Tables, batch_id: str) -> BatchState | None:
    stored = tables.batches.get(batch_id.encode())
    return BatchState.model_validate_json(stored) if stored else None


def outcomes_of(tables: Tables, batch_id: str) -> list[ImageOutcome]:
    images = tables.batch_images
    index = images.get(f"{batch_id}/{INDEX}".encode())
    outcomes = []
    for job_id in json.loads(index) if index else []:
        stored = images.get(f"{batch_id}/{job_id}".encode())
        if stored:
            outcomes.append(ImageOutcome.model_validate_json(stored))
    return outcomes


def report_json(state: BatchState, outcomes: list[ImageOutcome]) -> bytes:
    body = {
        "batch_id": state.batch_id, "tenant": state.tenant, "status": state.status.value,
        "summary": summary(state),
        "counts": counts(state), "tolerated_failure_pct": state.tolerated_failure_pct,
        "met_threshold": state.met_threshold,
        "error": state.error.model_dump(mode="json") if state.error else None,
        "created_at": state.created_at, "finished_at": state.finished_at,
        "images": [o.model_dump(mode="json") for o in outcomes],
    }
    return json.dumps(body, indent=2).encode()


# A spreadsheet runs a cell starting with one of these as a formula (CSV injection, OWASP):
# `=HYPERLINK(...)` in an image name would run when someone opens the report.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    """A text cell prefixed with ' when a spreadsheet would read it as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def report_csv(outcomes: list[ImageOutcome]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for o in outcomes:
        writer.writerow({key: spreadsheet_safe(value) for key, value in {
            "name": o.name, "job_id": o.job_id, "image": o.image, "status": o.status,
            "error": o.error or "", "cause": o.cause or "", "outputs": " ".join(o.outputs),
            "seed": "" if o.seed is None else o.seed,
            "mask_ms": o.timings_ms.get("mask", ""), "render_ms": o.timings_ms.get("render", ""),
            "finish_ms": o.timings_ms.get("finish", ""),
        }.items()})
    return buffer.getvalue().encode()


def counts(state: BatchState) -> dict[str, int]:
    """How many images the batch has, how many ended which way, and how many still wait in
    the batch for their turn in the pipeline (RESTYLE_BATCH_WINDOW)."""
    total = state.total or 0
    waiting = 0 if state.finished or state.cancelled_by else max(0, total - state.released)
    return {"total": total, "succeeded": state.succeeded, "failed": state.failed,
            "cancelled": state.cancelled, "waiting": waiting}


async def write_report(rt: Runtime, state: BatchState,
                       outcomes: list[ImageOutcome]) -> dict[str, str]:
    base = join_uri(rt.base_for(state.tenant), "batches", state.batch_id)
    report = {"json": join_uri(base, "report.json"), "csv": join_uri(base, "report.csv")}
    await rt.storage.put(report["json"], report_json(state, outcomes), "application/json")
    await rt.storage.put(report["csv"], report_csv(outcomes), "text/csv")
    return report


async def notification_for(rt: Runtime, state: BatchState,
                           outcomes: list[ImageOutcome]) -> BatchNotification:
    presign, limit = rt.storage.presign, rt.settings.notification_max_links
    report = {kind: await presign(uri) for kind, uri in (state.report or {}).items()}
    outputs = []
    for outcome in [o for o in outcomes if o.status == "done"][:limit]:
        outputs.append({"name": outcome.name, "job_id": outcome.job_id,
                        "urls": [await presign(uri) for uri in outcome.outputs]})
    failures = [{"name": o.name, "job_id": o.job_id, "error": o.error, "cause": o.cause}
                for o in outcomes if o.status == "failed"][:MAX_LISTED_FAILURES]
    return BatchNotification(
        batch_id=state.batch_id, tenant=state.tenant, status=state.status,
        summary=summary(state), counts=counts(state),
        tolerated_failure_pct=state.tolerated_failure_pct,
        met_threshold=bool(state.met_threshold), error=state.error, report=report,
        outputs=outputs, failures=failures, links_expire_s=rt.settings.presign_expiry_s,
        at=time.time())
