"""Job state as the status table keeps it, and the result users receive."""
from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from schemas.avatars import PhotoCheck
from schemas.errors import JobError
from schemas.pipelines import AnyResult


class JobStatus(StrEnum):
    QUEUED = "queued"
    ANALYZING = "analyzing"
    # Waiting for a GPU worker (or a trainer) to take it: time here is queue, not a stall.
    QUEUED_FOR_GPU = "queued_for_gpu"
    GENERATING = "generating"
    TRAINING = "training"
    REANALYZING = "re-analyzing"
    DONE = "done"
    FAILED = "failed"
    # Stopped on request (DELETE /jobs/{id}, `restyle cancel`, a cancel on restyle.uploads).
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)

    @property
    def rank(self) -> int:
        # Events from different workers can arrive slightly out of order; state only moves forward.
        return _RANK[self]


_RANK = {
    JobStatus.QUEUED: 0,
    JobStatus.ANALYZING: 1,
    JobStatus.QUEUED_FOR_GPU: 2,
    JobStatus.GENERATING: 3,
    JobStatus.TRAINING: 3,
    JobStatus.REANALYZING: 4,
    JobStatus.DONE: 5,
    JobStatus.FAILED: 5,
    JobStatus.CANCELLED: 5,
}


class Progress(BaseModel):
    step: int
    total: int
    # Training reports its loss at each step it announces.
    loss: float | None = None
    # A render's small preview of the image so far (a data: URI, JPEG), every
    # RESTYLE_PREVIEW_EVERY_STEPS steps: what a page shows sharpening as the render proceeds.
    preview: str | None = None


class QueueSpot(BaseModel):
    """Where a job's request waits for a GPU worker or a trainer: its record on the request
    topic. The status API turns it into a queue position (requests ahead of it there)."""

    topic: str
    partition: int
    offset: int


class Cancellation(BaseModel):
    """A job cancelled, on the compacted `restyle.cancellations` (keyed by job id) that every
    worker reads: a stage does not start it, a render or a training stops at its next step."""

    job_id: str
    by: str
    at: float


class WorkerDeaths(BaseModel):
    """A message that was in flight when worker processes died, as one in-flight journal (a
    worker's slot on its host) counted those deaths, on the compacted `restyle.worker-deaths`
    (keyed by spot and journal) that every worker reads: a message that kills workers is
    counted across workers and hosts."""

    spot: str  # the stage, topic, partition and offset, as the journals name them
    journal: str  # the identity of the journal (a worker's slot) that counted them
    deaths: int = Field(ge=0)  # 0: forgiven (the message then ran to its end)
    at: float  # when it was told (after the deaths)
    # In a forgiveness: the deaths it forgave (a journal that counts no more than these of the
    # message has nothing left to tell of it)
    forgiven: int = Field(0, ge=0)


class TenantActivity(BaseModel):
    """A job of a tenant started or ended, on `restyle.tenant-activity` (keyed by tenant)."""

    tenant: str
    job_id: str
    active: bool
    at: float
    # What a tenant's job list shows: its pipeline and batch; how it ended, and why if it
    # failed (active False).
    pipeline: str | None = None
    batch_id: str | None = None
    status: JobStatus | None = None
    error: JobError | None = None
    retryable: bool = False  # POST /jobs/{id}/retry would take it (JobState.retryable)


class RecentJob(BaseModel):
    """A line of a tenant's job list (`GET /jobs`): one of its newest jobs."""

    job_id: str
    pipeline: str | None = None
    batch_id: str | None = None
    # "active" while it runs, then how it ended.
    status: str
    error: JobError | None = None
    started_at: float
    ended_at: float | None = None
    retryable: bool = False  # POST /jobs/{id}/retry would take it


class JobState(BaseModel):
    # One decoded state is shared by whoever reads the job (the status API, the tracker, the
    # SSE streams: JobBoard), so a change is a copy (model_copy(update=...)), never in place:
    # frozen guards its fields; what they hold (result, upload, ...) must not be changed either.
    model_config = ConfigDict(frozen=True)

    job_id: str
    tenant: str | None = None
    # None only for an upload refused before its pipeline could be read.
    pipeline: str | None = None
    status: JobStatus
    error: JobError | None = None
    result: AnyResult | None = None
    # The batch a job belongs to (background replacement), so its outcome reaches the batch.
    batch_id: str | None = None
    progress: Progress | None = None
    # queued_for_gpu: where its request waits (known once the broker has acknowledged it).
    queue: QueueSpot | None = None
    created_at: float
    updated_at: float
    # Avatar training: the face check's verdict, once known (before the training starts).
    photo_check: PhotoCheck | None = None
    # The upload that started a job submitted on its own (not a batch's image), as admitted:
    # what `POST /jobs/{job_id}/retry` submits again under a new id.
    upload: dict | None = None

    @property
    def retryable(self) -> bool:
        """Whether POST /jobs/{id}/retry can submit it again: it failed or was cancelled, and
        its upload was kept (a job submitted on its own, not a batch's image)."""
        return self.status in (JobStatus.FAILED, JobStatus.CANCELLED) and self.upload is not None
