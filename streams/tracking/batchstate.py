"""The batch state machine as a pure function: how each batch event changes a batch.

The batch tracker folds `restyle.batch-events` through `apply_batch_event` into the batches
table. Replays converge: a batch opens once, each image counts once, a finished batch is final
(except for recording its notification's delivery)."""
from __future__ import annotations

from dataclasses import dataclass, field

from schemas.background import BatchEvent, BatchEventKind, BatchState, BatchStatus, ImageOutcome


@dataclass
class BatchTransition:
    state: BatchState | None  # the new state to store (None: nothing changes)
    entries: list[ImageOutcome] = field(default_factory=list)  # per-image records to store
    index: list[str] | None = None  # job ids to append to the batch's ordered list
    finished: bool = False  # it has ended and is not reported yet: write the report, notify


def apply_batch_event(state: BatchState | None, previous: ImageOutcome | None,
                      event: BatchEvent, default_tolerated_pct: float) -> BatchTransition:
    kind = event.kind
    if kind is BatchEventKind.OPENED:
        if state is not None:
            return BatchTransition(None)  # the same batch submitted again
        tolerated = (default_tolerated_pct if event.tolerated_failure_pct is None
                     else event.tolerated_failure_pct)
        new = BatchState(batch_id=event.batch_id, tenant=event.tenant, total=event.total,
                         tolerated_failure_pct=tolerated, webhook=event.webhook,
                         created_at=event.at, updated_at=event.at)
        entries = [ImageOutcome(job_id=e.job_id, name=e.name, image=e.image, status="pending")
                   for e in event.images]
        return BatchTransition(new, entries, [e.job_id for e in event.images])
    if kind is BatchEventKind.ENTRIES:
        if state is None or state.finished:
            return BatchTransition(None)
        entries = [ImageOutcome(job_id=e.job_id, name=e.name, image=e.image, status="pending")
                   for e in event.images]
        return BatchTransition(state, entries, [e.job_id for e in event.images])
    if kind is BatchEventKind.REJECTED:
        if state is not None:
            return BatchTransition(None)  # a bad duplicate must not fail the real batch
        new = BatchState(batch_id=event.batch_id, tenant=event.tenant, total=0,
                         status=BatchStatus.FAILED, met_threshold=False, error=event.error,
                         webhook=event.webhook, created_at=event.at, updated_at=event.at,
                         finished_at=event.at)
        return BatchTransition(new.model_copy(update={"reporting": True}), finished=True)
    if kind is BatchEventKind.CANCEL:
        foreign = None not in (event.tenant, state and state.tenant) and \
            event.tenant != state.tenant
        if state is None or state.finished or state.cancelled_by is not None or foreign:
            return BatchTransition(None)  # nothing to stop, stopped already, or not theirs
        return BatchTransition(state.model_copy(update={
            "cancelled_by": event.by or "an upstream system",
            "updated_at": max(state.updated_at, event.at)}))
    if kind is BatchEventKind.NOTIFIED:
        if state is None:
            return BatchTransition(None)
        return BatchTransition(state.model_copy(update={"notification": event.delivery}))
    # an image finished
    if state is None or event.outcome is None:
        return BatchTransition(None)
    if state.finished:
        # A replay after a crash between finishing and reporting: report now.
        return BatchTransition(state, finished=True) if state.reporting else \
            BatchTransition(None)
    if previous is None:
        return BatchTransition(None)  # not an image this batch opened with
    if previous.status != "pending":
        return BatchTransition(None)  # a redelivered outcome counts once
    outcome = event.outcome.model_copy(update={"name": previous.name, "image": previous.image})
    new = state.model_copy(deep=True)
    if outcome.status == "done":
        new.succeeded += 1
    elif outcome.status == "cancelled":
        new.cancelled += 1
    else:
        new.failed += 1
    new.updated_at = max(new.updated_at, event.at)
    return BatchTransition(new, [outcome], finished=_finish_if_complete(new, event.at))


def cancel_waiting(state: BatchState, waiting: list[ImageOutcome], listed: int,
                   at: float) -> BatchTransition:
    """A cancelled batch's images that never reached the pipeline (`waiting`, the pending
    entries past `released` among the `listed` so far) end cancelled now; the ones in the
    pipeline end as their jobs do (each job is cancelled)."""
    cause = f"cancelled by {state.cancelled_by}"
    entries = [entry.model_copy(update={"status": "cancelled", "error": "cancelled",
                                        "cause": cause})
               for entry in waiting if entry.status == "pending"]
    new = state.model_copy(update={"cancelled": state.cancelled + len(entries),
                                   "released": max(state.released, listed)})
    return BatchTransition(new, entries, finished=_finish_if_complete(new, at))


def _finish_if_complete(new: BatchState, at: float) -> bool:
    """Every image accounted for: the batch ends (new is changed in place)."""
    if new.total is None or new.succeeded + new.failed + new.cancelled < new.total:
        return False
    new.met_threshold = failed_pct(new) <= new.tolerated_failure_pct
    if new.cancelled_by is not None:
        new.status = BatchStatus.CANCELLED
    else:
        new.status = BatchStatus.SUCCEEDED if new.met_threshold else BatchStatus.FAILED
    new.finished_at = at
    new.reporting = True
    return True


def to_release(state: BatchState, known: int, window: int) -> range:
    """The index positions to hand to the pipeline now: enough that `window` images of the
    batch are in flight (all of them with window 0), among the `known` images it has listed
    so far."""
    if state.finished or state.cancelled_by is not None:
        return range(0)
    limit = known if window <= 0 else min(known, state.succeeded + state.failed + window)
    return range(state.released, max(state.released, limit))


def failed_pct(state: BatchState) -> float:
    return 100.0 * state.failed / state.total if state.total else 0.0


def summary(state: BatchState) -> str:
    """One true sentence about a finished batch: a batch with failures never reads as a clean
    success."""
    if state.error is not None:
        return f"Batch {state.batch_id} failed before any image ran: {state.error.message}"
    total, failed = state.total or 0, state.failed
    if state.status is BatchStatus.CANCELLED:
        return (f"Batch {state.batch_id} was cancelled by {state.cancelled_by}: "
                f"{state.succeeded} of {total} images succeeded, {failed} failed and "
                f"{state.cancelled} were cancelled.")
    if failed == 0:
        return f"Batch {state.batch_id} completed: all {total} images succeeded."
    share = f"{failed_pct(state):.1f}%"
    if state.met_threshold:
        return (f"Batch {state.batch_id} completed with failures: {failed} of {total} images "
                f"failed ({share}), within the tolerated {state.tolerated_failure_pct:g}%.")
    return (f"Batch {state.batch_id} failed: {failed} of {total} images failed ({share}), "
            f"above the tolerated {state.tolerated_failure_pct:g}%.")
