"""The CPU worker's faust tables, declared here and nowhere else.

Raw bytes both ways: keys are ids exactly as producers key the event topics (so the web router
hashes an id to the worker that owns it), values are the pydantic models as JSON.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import faust

from streams.core.settings import Settings
from streams.tracking.jobboard import JobBoard
from streams.tracking.watchers import Watchers


@dataclass
class Tables:
    # job_id -> JobState JSON.
    jobs: faust.Table
    # ingest_id -> IngestState JSON, and "ingest_id/product_id" -> that product's last outcome.
    ingests: faust.Table
    ingest_outcomes: faust.Table
    # batch_id -> BatchState JSON; "batch_id/job_id" -> ImageOutcome JSON (and the batch's
    # job ids in order under "batch_id/#index").
    batches: faust.Table
    batch_images: faust.Table
    # tenant -> {job_id: started_at} of its jobs in flight; "tenant/job_id" -> RecentJob JSON
    # and "tenant/#index" -> the tenant's newest job ids (streams/tracking/activity.py). One
    # table for both: every table adds its partitions' stores to open at each rebalance.
    activity: faust.Table
    # The jobs table plus render progress not yet stored in it: read job state through this.
    board: JobBoard
    # Who waits for a tenant's list of jobs to change here (its SSE streams).
    tenant_changes: Watchers = field(default_factory=Watchers)


class GuardedTable(faust.Table):
    """A table a worker writes only while it is in its group: a worker stopped past its session
    timeout in the middle of a message (streams/core/pauses.py) would otherwise write stale
    state over what the partition's new owner has written since. guard raises OutOfGroup then,
    before the record is kept or sent to the changelog."""

    guard: Callable[[], None] = staticmethod(lambda: None)

    def on_key_set(self, key, value) -> None:
        self.guard()
        super().on_key_set(key, value)

    def on_key_del(self, key) -> None:
        self.guard()
        super().on_key_del(key)


def open_tables(app: faust.App, settings: Settings,
                guard: Callable[[], None] = lambda: None) -> Tables:
    """guard(): called before every write (PauseWatch.ensure_in_group, for a worker)."""
    def table(name: str) -> faust.Table:
        # (what app.Table does, with this class)
        made = GuardedTable(app, name=name, default=None, beacon=app.tables.beacon,
                            partitions=settings.partitions, key_type=bytes, value_type=bytes)
        made.guard = guard
        return app.tables.add(made)

    jobs = table("jobs")
    return Tables(jobs=jobs, ingests=table("ingests"), ingest_outcomes=table("ingest-outcomes"),
                  batches=table("batches"), batch_images=table("batch-images"),
                  activity=table("tenant-activity"),
                  board=JobBoard(jobs, settings.progress_store_interval_s))
