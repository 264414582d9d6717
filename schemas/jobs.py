"""Job state as the status table keeps it, and the result users receive."""
from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Union

from pydantic import BaseModel, Discriminator, Field, Tag

from schemas.background import BackgroundResult
from schemas.conditioning import ConditionResult
from schemas.errors import JobError
from schemas.media import ImageRef, ProductMatch


def pipeline_of(value) -> str:
    """Which pipeline a job or result belongs to; records written before restyle had a second
    pipeline carry no tag and are room makeovers."""
    if isinstance(value, dict):
        return value.get("pipeline", "room_makeover")
    return getattr(value, "pipeline", "room_makeover")


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
    pipeline: Literal["room_makeover"] = "room_makeover"
    images: list[ImageRef] = Field(default_factory=list)
    products: list[ProductMatch] = Field(default_factory=list)
    seed: int | None = None
    prompt: str | None = None
    style: str | None = None
    depth_map: str | None = None
    detected: list[ProductMatch] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    waits_ms: dict[str, float] = Field(default_factory=dict)


AnyResult = Annotated[Union[Annotated[MakeoverResult, Tag("room_makeover")],
                            Annotated[BackgroundResult, Tag("background_replace")],
                            Annotated[ConditionResult, Tag("condition")]],
                      Discriminator(pipeline_of)]


class JobState(BaseModel):
    job_id: str
    tenant: str | None = None
    pipeline: str = "room_makeover"
    status: JobStatus
    error: JobError | None = None
    result: AnyResult | None = None
    # The batch a job belongs to (background replacement), so its outcome reaches the batch.
    batch_id: str | None = None
    progress: Progress | None = None
    created_at: float
    updated_at: float
