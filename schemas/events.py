"""Events on the topics: the contract between upstream systems, the stages and downstream consumers.

Images travel in events by their URIs (claim check). The one exception is between restyle's own
workers: a render request and its reply may also carry small images beside the URIs they are
stored at (`carried`), so the worker on the other end need not read them back.
"""
from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.avatars import PhotoCheck
from schemas.errors import JobError
from schemas.ids import BATCH_ID_PATTERN, JOB_ID_PATTERN, SCHEMA_VERSION
from schemas.jobs import JobStatus, Progress, QueueSpot
from schemas.params import RenderParams
from schemas.pipelines import AnyJob, AnyResult

# controlnet_depth: generate under control_image (a depth map). controlnet: the same, with the
# ControlNet that `control` names. inpaint: repaint image where mask is white. avatar: text to
# image with a person's LoRA adapter on the base model.
RenderTask = Literal["controlnet_depth", "controlnet", "inpaint", "avatar"]


# Encoded images by the URI each is stored at (base64 in JSON): the small ones a message
# carries so that its reader need not fetch them (RESTYLE_CARRY_IMAGE_MAX_BYTES). Storage still
# holds each one: a reader may always fetch it instead.
CarriedImages = dict[str, bytes]
_CARRIES_IMAGES = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")


class RenderRequest(BaseModel):
    """Work for the GPU agent. Pipeline-agnostic: the caller names where the answer goes and
    passes its own context through untouched."""

    model_config = _CARRIES_IMAGES

    job_id: str
    tenant: str | None = None
    prompt: str
    task: RenderTask = "controlnet_depth"
    # controlnet: which ControlNet conditions it (its model role is controlnet_{control}).
    control: Literal["depth", "canny", "seg"] = "depth"
    control_image: str | None = None
    image: str | None = None
    mask: str | None = None
    params: RenderParams
    output_prefix: str
    reply_topic: str
    model: str | None = None
    # avatar: the adapter's file, its name (the registry key: the same adapter keeps its name
    # on every worker) and its weight.
    adapter: str | None = None
    adapter_id: str | None = None
    lora_scale: float = 1.0
    # Stored with each image (S3 object metadata), e.g. the source key and the prompt.
    metadata: dict[str, str] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    sent_at: float | None = None
    # Inputs above (control_image, image, mask) small enough to travel with the request.
    carried: CarriedImages = Field(default_factory=dict)

    @model_validator(mode="after")
    def _inputs_for_task(self) -> "RenderRequest":
        needed = {"inpaint": ["image", "mask"], "avatar": ["adapter", "adapter_id", "model"]
                  }.get(self.task, ["control_image"])
        missing = [name for name in needed if not getattr(self, name)]
        if missing:
            raise ValueError(f"task {self.task} needs {', '.join(missing)}")
        return self


class RenderResult(BaseModel):
    model_config = _CARRIES_IMAGES

    job_id: str
    images: list[str] = Field(default_factory=list)
    seed: int
    render_ms: float
    # Time the request waited for the GPU: from its send until the model's turn came (on the
    # topic, then held in the worker behind other requests).
    wait_ms: float | None = None
    error: JobError | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    sent_at: float | None = None
    # Rendered images small enough to travel with the reply (for a stage that looks at them).
    carried: CarriedImages = Field(default_factory=dict)


class JobEventKind(StrEnum):
    SUBMITTED = "submitted"  # a valid upload: starts the job unless the job_id is known
    REJECTED = "rejected"  # an invalid upload: fails the job unless the job_id is known
    STATUS = "status"
    PROGRESS = "progress"
    COMPLETED = "completed"
    FAILED = "failed"
    # A request to stop the job (the tracker ends it `cancelled` unless it already ended).
    CANCELLED = "cancelled"
    # A worker shutting down gave the job's request back mid-work: it waits for a worker
    # again (queued_for_gpu), and its queue time is not a stall.
    REQUEUED = "requeued"


class JobEvent(BaseModel):
    """Everything that happens to a job, on `restyle.job-events` (keyed by job_id)."""

    job_id: str
    kind: JobEventKind
    at: float
    tenant: str | None = None
    # The contract's version (also in each message's restyle-schema-version header).
    schema_version: Literal[1] = SCHEMA_VERSION
    # The pipeline of a rejected upload (a submitted job names its own).
    pipeline: str | None = None
    batch_id: str | None = None
    status: JobStatus | None = None
    stage: str | None = None
    progress: Progress | None = None
    error: JobError | None = None
    result: AnyResult | None = None
    job: AnyJob | None = None
    # submitted: the upload as admitted (kept on the job's state for a retry).
    upload: dict | None = None
    # cancelled: who asked (a tenant and its key or token subject, or an upstream system).
    by: str | None = None
    # queued_for_gpu: where the job's request waits.
    queue: QueueSpot | None = None
    # status, avatar training: the face check's verdict on the photos.
    photo_check: PhotoCheck | None = None


class CancelRequest(BaseModel):
    """`restyle.uploads` with `"cancel"` (a job id) or `"cancel_batch"` (a batch id): an
    upstream system stops one of its jobs or batches."""

    model_config = ConfigDict(extra="forbid")

    cancel: str | None = Field(None, pattern=JOB_ID_PATTERN)
    cancel_batch: str | None = Field(None, pattern=BATCH_ID_PATTERN)
    tenant: str | None = Field(None, max_length=128)
    # Who asks, for the job's record ("an upstream system" when left out).
    by: str | None = Field(None, max_length=200)

    @model_validator(mode="after")
    def _one_target(self):
        if (self.cancel is None) == (self.cancel_batch is None):
            raise ValueError("name one job (cancel) or one batch (cancel_batch)")
        return self


class ResultEvent(BaseModel):
    """One per finished job on `restyle.results`, keyed by job_id."""

    job_id: str
    tenant: str | None = None
    pipeline: str | None = None  # None only for an upload refused before it named one
    batch_id: str | None = None
    status: Literal["done", "failed", "cancelled"]
    error: JobError | None = None
    result: AnyResult | None = None
    finished_at: float
    schema_version: Literal[1] = SCHEMA_VERSION


class DeadLetter(BaseModel):
    """What a record on the dead-letter topic says about itself. The record is the original
    message as it was (its key, its value, its headers); what went wrong travels in headers
    named `restyle-dlq-*` (from_record / headers). An original above the inline limit is kept
    in object storage, its URI in `restyle-dlq-original`, and the record's value is empty."""

    source_topic: str
    partition: int | None = None
    offset: int | None = None
    key: str | None = None
    code: str
    reason: str
    job_id: str | None = None
    # How many times the stage tried the message before giving it up.
    attempts: int = 1
    at: float
    original_uri: str | None = None

    def headers(self) -> list[tuple[str, bytes]]:
        fields = {"code": self.code, "reason": self.reason[:1000],
                  "source-topic": self.source_topic, "source-partition": self.partition,
                  "source-offset": self.offset, "attempts": self.attempts,
                  "job-id": self.job_id, "at": repr(self.at), "original": self.original_uri}
        return [(DLQ_HEADER + name, str(value).encode()) for name, value in fields.items()
                if value is not None]

    @classmethod
    def from_record(cls, key: bytes | None, headers) -> "DeadLetter":
        """The letter a DLQ record carries (headers: a list of (name, bytes) pairs)."""
        found = {name[len(DLQ_HEADER):]: value.decode(errors="replace")
                 for name, value in (headers or [])
                 if name.startswith(DLQ_HEADER) and value is not None}

        def number(name: str) -> int | None:
            return int(found[name]) if found.get(name, "").isdigit() else None

        return cls(source_topic=found.get("source-topic", ""),
                   partition=number("source-partition"), offset=number("source-offset"),
                   key=key.decode(errors="replace") if key is not None else None,
                   code=found.get("code", ""), reason=found.get("reason", ""),
                   job_id=found.get("job-id"), attempts=number("attempts") or 1,
                   at=float(found.get("at") or 0), original_uri=found.get("original"))


# The headers restyle adds to a dead letter (the original's own headers are kept beside them).
DLQ_HEADER = "restyle-dlq-"


def original_headers(headers) -> list[tuple[str, bytes]]:
    """A message's headers without what restyle added when dead-lettering it (so a replayed
    message that fails again is not labelled twice)."""
    return [(name, value) for name, value in (headers or [])
            if not name.startswith(DLQ_HEADER)]