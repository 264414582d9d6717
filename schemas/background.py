"""Background replacement: the batch users submit, each image's job between the stages, its
result, and the batch as `GET /batches/{id}`, the report and the notification show it."""
from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.errors import JobError
from schemas.ids import BATCH_ID_PATTERN, SCHEMA_VERSION  # noqa: F401 (BATCH_ID_PATTERN: part of this module's contract)
from schemas.media import ImageRef
from schemas.params import MAX_SEED, RenderParams

MAX_BATCH_IMAGES = 10_000


class OutpaintMode(StrEnum):
    # The model may repaint a feathered band inside the kept object's edge, so it blends in.
    DEFAULT = "DEFAULT"
    # Every kept pixel is the input pixel, bit for bit (composited after generation).
    PRECISE = "PRECISE"


class Quality(StrEnum):
    STANDARD = "standard"
    PREMIUM = "premium"


class MaskTarget(StrEnum):
    """What a mask prompt names: the objects to keep (outpainting, the background is new) or
    the objects to replace (inpainting, Titan's INPAINTING task)."""

    KEEP = "keep"
    REPLACE = "replace"


class BackgroundParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num_images: int | None = Field(None, ge=1, le=5)
    quality: Quality | None = None
    width: int | None = Field(None, ge=64, le=2048, multiple_of=8)
    height: int | None = Field(None, ge=64, le=2048, multiple_of=8)
    cfg_scale: float | None = Field(None, ge=0.0, le=30.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    # restyle's own: the quality level's step count, overridden.
    steps: int | None = Field(None, ge=1, le=150)


class ImageSpec(BaseModel):
    """One image of a batch with its own mask input (else the batch's)."""

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(min_length=1, max_length=4096)
    mask_prompt: str | None = Field(None, min_length=1, max_length=512)
    # A keep-mask image: white = keep, black = paint anew; the size of the image.
    mask_image: str | None = Field(None, min_length=1, max_length=4096)
    name: str | None = Field(None, max_length=512)


class Webhook(BaseModel):
    """Where to POST the batch.completed notification. The body is signed with HMAC-SHA256
    using the secret configured under `secret_name` (RESTYLE_WEBHOOK_SECRETS), so no secret
    travels in events."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://", max_length=2048)
    secret_name: str | None = Field(None, max_length=128)


class BackgroundBatch(BaseModel):
    """What upstream systems publish on `restyle.uploads` (and POST to /batches)."""

    model_config = ConfigDict(extra="forbid")

    pipeline: Literal["background_replace"]
    batch_id: str | None = Field(None, pattern=BATCH_ID_PATTERN)
    # URIs, or specs with per-image masks; a URI ending in "/" expands to every image under it.
    images: list[str | ImageSpec] = Field(min_length=1, max_length=MAX_BATCH_IMAGES)
    prompt: str = Field(min_length=1, max_length=2000)
    negative_prompt: str | None = Field(None, max_length=2000)
    mode: OutpaintMode | None = None  # default: RESTYLE_DEFAULT_OUTPAINT_MODE
    mask_prompt: str | None = Field(None, min_length=1, max_length=512)
    mask_image: str | None = Field(None, min_length=1, max_length=4096)
    mask_target: MaskTarget = MaskTarget.KEEP
    params: BackgroundParams = Field(default_factory=BackgroundParams)
    tolerated_failure_pct: float | None = Field(None, ge=0.0, le=100.0)
    webhook: Webhook | None = None
    tenant: str | None = Field(None, max_length=128)
    # Titan's returnMask: GET /jobs/{id}/titan also answers the mask, in Titan's convention.
    return_mask: bool = False
    # Set by the Titan adapters: only a Titan job's images are served by GET /jobs/{id}/titan.
    titan: bool = False
    schema_version: Literal[1] = 1

    @field_validator("images")
    @classmethod
    def _no_blank_uris(cls, images):
        for image in images:
            if isinstance(image, str) and not image.strip():
                raise ValueError("image URIs must not be empty")
        return images


class BackgroundJob(BaseModel):
    """One image of a batch as it moves between the stages."""

    pipeline: Literal["background_replace"] = "background_replace"
    job_id: str
    batch_id: str
    name: str
    tenant: str | None = None
    image: str
    mask_prompt: str | None = None
    mask_image: str | None = None
    mask_target: MaskTarget = MaskTarget.KEEP
    prompt: str
    mode: OutpaintMode
    params: RenderParams
    output_prefix: str
    submitted_at: float
    keep_mask: str | None = None  # the keep-mask the stages made (white = kept pixels)
    return_mask: bool = False
    titan: bool = False
    mask_labels: list[str] = Field(default_factory=list)
    timings_ms: dict[str, float] = Field(default_factory=dict)
    waits_ms: dict[str, float] = Field(default_factory=dict)
    sent_at: float | None = None


class BackgroundResult(BaseModel):
    pipeline: Literal["background_replace"] = "background_replace"
    batch_id: str
    name: str
    images: list[ImageRef] = Field(default_factory=list)
    seed: int | None = None
    mode: OutpaintMode | None = None
    prompt: str | None = None
    keep_mask: str | None = None
    mask_target: MaskTarget = MaskTarget.KEEP
    return_mask: bool = False
    titan: bool = False
    mask_labels: list[str] = Field(default_factory=list)
    width: int | None = None
    height: int | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    waits_ms: dict[str, float] = Field(default_factory=dict)


class BatchStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # Stopped on request: its pending images were cancelled, the rest reported as they ended.
    CANCELLED = "cancelled"


class ImageEntry(BaseModel):
    """One image of an expanded batch, with the job that renders it (none when the image was
    refused at expansion): the batch tracker hands jobs to the pipeline a few at a time."""

    job_id: str
    name: str
    image: str
    job: BackgroundJob | None = None


class ImageOutcome(BaseModel):
    """One image's line in the batch report."""

    job_id: str
    name: str = ""
    image: str = ""
    status: Literal["pending", "done", "failed", "cancelled"]
    error: str | None = None  # the machine code
    cause: str | None = None  # the sentence
    outputs: list[str] = Field(default_factory=list)
    seed: int | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)


class BatchEventKind(StrEnum):
    OPENED = "opened"  # expanded: how many images, and the first of them
    ENTRIES = "entries"  # more of the images (large batches open in several events)
    REJECTED = "rejected"  # could not be expanded (bad prefix, nothing under it)
    IMAGE = "image"  # one image finished
    NOTIFIED = "notified"  # the webhook delivery outcome
    CANCEL = "cancel"  # stop the batch (DELETE /batches/{id}, restyle cancel, an upstream system)


class BatchEvent(BaseModel):
    """Everything that happens to a batch, on `restyle.batch-events` (keyed by batch_id)."""

    batch_id: str
    kind: BatchEventKind
    at: float
    tenant: str | None = None
    total: int | None = None
    images: list[ImageEntry] = Field(default_factory=list)  # with OPENED
    tolerated_failure_pct: float | None = None
    webhook: Webhook | None = None
    outcome: ImageOutcome | None = None
    error: JobError | None = None
    delivery: dict | None = None
    by: str | None = None  # cancel: who asked


class BatchState(BaseModel):
    batch_id: str
    tenant: str | None = None
    status: BatchStatus = BatchStatus.RUNNING
    total: int | None = None
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    # Who stopped the batch (its pending images end cancelled; it ends cancelled).
    cancelled_by: str | None = None
    tolerated_failure_pct: float = 0.0
    met_threshold: bool | None = None
    error: JobError | None = None
    webhook: Webhook | None = None
    report: dict[str, str] | None = None  # {"json": uri, "csv": uri}
    # Finished, but the report and notification are not out yet (they are retried).
    reporting: bool = False
    notification: dict | None = None  # the webhook delivery outcome, once tried
    # How many of its images (in order) the batch has handed to the pipeline so far.
    released: int = 0
    created_at: float
    updated_at: float
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        return self.status is not BatchStatus.RUNNING


class BatchNotification(BaseModel):
    """`batch.completed` on `restyle.notifications`: what happened, in counts and in words, with
    presigned links (never bare storage paths) to the report and the outputs."""

    type: Literal["batch.completed"] = "batch.completed"
    schema_version: Literal[1] = SCHEMA_VERSION
    batch_id: str
    tenant: str | None = None
    status: BatchStatus
    summary: str
    counts: dict[str, int]
    tolerated_failure_pct: float
    met_threshold: bool
    error: JobError | None = None
    report: dict[str, str | None] = Field(default_factory=dict)  # {"json": url, "csv": url}
    outputs: list[dict] = Field(default_factory=list)  # [{"name", "urls"}], capped
    failures: list[dict] = Field(default_factory=list)  # [{"name", "error", "cause"}], capped
    links_expire_s: int
    at: float


class WebhookDelivery(BaseModel):
    """Internal: a notification to POST to a webhook (restyle.stage.webhooks)."""

    batch_id: str
    url: str
    secret_name: str | None = None
    # The batch's tenant: a named secret signs only for the tenants it is given to.
    tenant: str | None = None
    body: dict
