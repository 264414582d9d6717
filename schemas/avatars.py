"""Personalized avatars: a person's photos in, a DreamBooth-LoRA adapter out (avatar_train), and
images of that person from a prompt (avatar_generate). Trained adapters are listed in the model
registry (ModelRecord, on a compacted topic every worker reads)."""
from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from schemas.ids import JOB_ID_PATTERN
from schemas.media import ImageRef
from schemas.params import MAX_SEED, RenderParams, multiple_of_8

# A trigger token: letters and digits, so it stays one or a few tokens for the text encoder.
SUBJECT_PATTERN = r"^[A-Za-z][A-Za-z0-9]{1,31}$"
CLASS_WORD_PATTERN = r"^[A-Za-z][A-Za-z -]{0,47}$"
MAX_PHOTOS = 64


class TrainParams(BaseModel):
    """What a training request may set; anything left out takes the configured default
    (README, "Avatars": each default and why)."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(None, ge=1, le=20000)
    learning_rate: float | None = Field(None, gt=0, le=1e-2)
    rank: int | None = Field(None, ge=1, le=128)
    alpha: float | None = Field(None, gt=0, le=256)
    resolution: int | None = Field(None, ge=64, le=1024)
    batch_size: int | None = Field(None, ge=1, le=16)
    train_text_encoder: bool | None = None
    prior_preservation: bool | None = None
    class_images: int | None = Field(None, ge=1, le=1000)
    prior_loss_weight: float | None = Field(None, ge=0, le=10)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] | None = None
    gradient_checkpointing: bool | None = None
    checkpoint_every: int | None = Field(None, ge=1, le=20000)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)

    _check_resolution = field_validator("resolution")(lambda cls, v: multiple_of_8(v))


class ResolvedTrainParams(BaseModel):
    """Every training value settled (the seed chosen), so a run can be repeated."""

    steps: int
    learning_rate: float
    rank: int
    alpha: float
    resolution: int
    batch_size: int
    train_text_encoder: bool
    prior_preservation: bool
    class_images: int
    prior_loss_weight: float
    mixed_precision: Literal["auto", "no", "fp16", "bf16"]
    gradient_checkpointing: bool
    checkpoint_every: int
    seed: int


class AvatarTrainUpload(BaseModel):
    """`restyle.uploads` with `"pipeline": "avatar_train"`: 10-15 photos of one person (image
    URIs, or one prefix ending in "/" whose images are all used)."""

    model_config = ConfigDict(extra="forbid")

    job_id: str | None = Field(None, pattern=JOB_ID_PATTERN)
    pipeline: Literal["avatar_train"]
    tenant: str | None = Field(None, max_length=128)
    images: list[str] = Field(min_length=1, max_length=MAX_PHOTOS)
    subject: str | None = Field(None, pattern=SUBJECT_PATTERN)
    class_word: str | None = Field(None, pattern=CLASS_WORD_PATTERN)
    params: TrainParams = Field(default_factory=TrainParams)
    schema_version: Literal[1] = 1

    @field_validator("images")
    @classmethod
    def _uris(cls, images: list[str]) -> list[str]:
        for uri in images:
            if not uri or len(uri) > 4096:
                raise ValueError("each image is a URI of 1 to 4096 characters")
        if any(uri.endswith("/") for uri in images) and len(images) > 1:
            raise ValueError("give either image URIs or one prefix ending in \"/\", not both")
        return images


class PhotoRejection(BaseModel):
    image: str
    code: str  # no_face, many_faces, duplicate, not_an_image, too_small, ...
    reason: str


class PhotoCheck(BaseModel):
    """The face check's verdict on a training job's photos, on its state from the moment it is
    known (before the training starts): the photos kept and those rejected, with why."""

    accepted: list[str] = Field(default_factory=list)
    rejected: list[PhotoRejection] = Field(default_factory=list)


class AvatarTrainJob(BaseModel):
    pipeline: Literal["avatar_train"] = "avatar_train"
    job_id: str
    tenant: str | None = None
    # The model this training makes: its id is the job's id.
    model_id: str
    images: list[str]
    subject: str
    class_word: str
    params: ResolvedTrainParams
    base_model: str
    family: str
    # Where the adapter, the accepted crops and the checkpoints are written.
    model_prefix: str
    # Filled by the photo check: the face crops trained on, their hashes, what was refused.
    photos: list[str] = Field(default_factory=list)
    photo_hashes: list[str] = Field(default_factory=list)
    rejected: list[PhotoRejection] = Field(default_factory=list)
    submitted_at: float
    timings_ms: dict[str, float] = Field(default_factory=dict)
    waits_ms: dict[str, float] = Field(default_factory=dict)
    sent_at: float | None = None

    @property
    def trigger(self) -> str:
        return f"{self.subject} {self.class_word}"


class TrainRequest(BaseModel):
    """Work for the trainer worker (restyle.train-requests, keyed by model id): the job, and
    the topic its answer (a TrainOutcome) goes to."""

    job_id: str
    tenant: str | None = None
    job: AvatarTrainJob
    reply_topic: str
    sent_at: float | None = None


class TrainOutcome(BaseModel):
    """The trainer's answer: the job (its context) and what training made."""

    job_id: str
    adapter: str
    steps: int
    final_loss: float
    resumed_from: int = 0
    train_ms: float
    class_images: str | None = None
    job: AvatarTrainJob
    sent_at: float | None = None


class AvatarTrainResult(BaseModel):
    pipeline: Literal["avatar_train"] = "avatar_train"
    model_id: str
    subject: str
    class_word: str
    trigger: str
    base_model: str
    adapter: str
    photos: list[str] = Field(default_factory=list)
    rejected: list[PhotoRejection] = Field(default_factory=list)
    steps: int
    final_loss: float
    resumed_from: int = 0
    params: ResolvedTrainParams
    timings_ms: dict[str, float] = Field(default_factory=dict)
    waits_ms: dict[str, float] = Field(default_factory=dict)


class ModelStatus(StrEnum):
    READY = "ready"
    DELETED = "deleted"


class ModelRecord(BaseModel):
    """One trained adapter in the registry (the compacted models topic, keyed tenant/model_id:
    the latest record per key wins)."""

    model_id: str
    tenant: str
    status: ModelStatus = ModelStatus.READY
    base_model: str
    family: str
    adapter: str
    # Everything stored for the model (adapter, face crops, checkpoints) is under this prefix;
    # the photos themselves under `uploads` when they were uploaded to restyle for it.
    files: str
    uploads: str | None = None
    # The first accepted face crop (under files): the model's picture in a gallery.
    cover: str | None = None
    rank: int
    alpha: float
    subject: str
    class_word: str
    photo_hashes: list[str] = Field(default_factory=list)
    steps: int
    final_loss: float
    created_at: float
    deleted_at: float | None = None

    @property
    def key(self) -> str:
        return registry_key(self.tenant, self.model_id)

    @property
    def trigger(self) -> str:
        return f"{self.subject} {self.class_word}"


def registry_key(tenant: str, model_id: str) -> str:
    return f"{tenant}/{model_id}"


class GenerateParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(None, ge=1, le=150)
    guidance: float | None = Field(None, ge=0.0, le=30.0)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    num_images: int | None = Field(None, ge=1, le=4)
    width: int | None = Field(None, ge=64, le=2048)
    height: int | None = Field(None, ge=64, le=2048)
    # How strongly the person's adapter applies (0: the base model alone).
    lora_scale: float | None = Field(None, ge=0.0, le=2.0)

    _check_size = field_validator("width", "height")(lambda cls, v: multiple_of_8(v))


class AvatarGenerateUpload(BaseModel):
    """`restyle.uploads` with `"pipeline": "avatar_generate"`: a prompt for a trained model;
    `{subject}` in it becomes the model's trigger phrase ("sks person")."""

    model_config = ConfigDict(extra="forbid")

    job_id: str | None = Field(None, pattern=JOB_ID_PATTERN)
    pipeline: Literal["avatar_generate"]
    tenant: str | None = Field(None, max_length=128)
    model_id: str = Field(pattern=JOB_ID_PATTERN)
    prompt: str = Field(min_length=1, max_length=2000)
    negative_prompt: str | None = Field(None, max_length=2000)
    params: GenerateParams = Field(default_factory=GenerateParams)
    schema_version: Literal[1] = 1


class AvatarGenerateJob(BaseModel):
    pipeline: Literal["avatar_generate"] = "avatar_generate"
    job_id: str
    tenant: str | None = None
    model_id: str
    prompt: str
    params: RenderParams
    lora_scale: float
    output_prefix: str
    # Set from the registry when the job starts.
    adapter: str | None = None
    base_model: str | None = None
    submitted_at: float
    timings_ms: dict[str, float] = Field(default_factory=dict)
    waits_ms: dict[str, float] = Field(default_factory=dict)
    sent_at: float | None = None


class AvatarGenerateResult(BaseModel):
    pipeline: Literal["avatar_generate"] = "avatar_generate"
    model_id: str
    images: list[ImageRef] = Field(default_factory=list)
    prompt: str
    seed: int
    width: int
    height: int
    lora_scale: float
    timings_ms: dict[str, float] = Field(default_factory=dict)
    waits_ms: dict[str, float] = Field(default_factory=dict)
