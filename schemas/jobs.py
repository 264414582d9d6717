"""Job state as the status table keeps it, and the result users receive."""
from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field

from schemas.errors import JobError
from schemas.media import ImageRef, ProductMatch


class JobStatus(StrEnum):
    QUEUED = "queued"
    ANALYZING = "analyzing"
    GENERATING = "generating"
    REANALYZING = "re-analyzing"
    DONE = "done"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED)

    @property
    def rank(self) -> int:
        # Events from different workers can arrive slightly out of order; state only moves forward.
        return _RANK[self]


_RANK = {
    JobStatus.QUEUED: 0,
    JobStatus.ANALYZING: 1,
    JobStatus.GENERATING: 2,
    JobStatus.REANALYZING: 3,
    JobStatus.DONE: 4,
    JobStatus.FAILED: 4,
}


class Progress(BaseModel):
    step: int
    total: int


class MakeoverResult(BaseModel):
    images: list[ImageRef] = Field(default_factory=list)
    products: list[ProductMatch] = Field(default_factory=list)
    seed: int | None = None
    prompt: str | None = None
    style: str | None = None
    depth_map: str | None = None
    detected: list[ProductMatch] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    waits_ms: dict[str, float] = Field(default_factory=dict)


class JobState(BaseModel):
    job_id: str
    tenant: str | None = None
    pipeline: str = "room_makeover"
    status: JobStatus
    error: JobError | None = None
    result: MakeoverResult | None = None
    progress: Progress | None = None
    created_at: float
    updated_at: float
