"""Errors are values: a stable machine code plus a sentence a person can act on."""
from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class ErrorCode(StrEnum):
    INVALID_JSON = "invalid_json"
    SCHEMA_VIOLATION = "schema_violation"
    UNSUPPORTED_PIPELINE = "unsupported_pipeline"
    URI_REFUSED = "uri_refused"
    OBJECT_NOT_FOUND = "object_not_found"
    NOT_AN_IMAGE = "not_an_image"
    IMAGE_TOO_LARGE = "image_too_large"
    UNKNOWN_STYLE = "unknown_style"
    INVALID_PARAMS = "invalid_params"
    STORAGE_ERROR = "storage_error"
    # A dependency that did not answer within the stage's retry budget (the message says how
    # many attempts were made): object storage, the vector index, the Kafka broker.
    STORAGE_UNAVAILABLE = "storage_unavailable"
    INDEX_UNAVAILABLE = "index_unavailable"
    BROKER_UNAVAILABLE = "broker_unavailable"
    MODEL_ERROR = "model_error"
    INVALID_MASK = "invalid_mask"
    MASK_EMPTY = "mask_empty"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    # Avatars: too few usable photos of one face; a model that is not there (unknown, deleted,
    # another tenant's) or was trained on another base model than the one served.
    TOO_FEW_FACES = "too_few_faces"
    MODEL_NOT_FOUND = "model_not_found"
    MODEL_MISMATCH = "model_mismatch"
    # The GPU (or the host) could not hold what the job asked for; the message says the size.
    GPU_OUT_OF_MEMORY = "gpu_out_of_memory"
    # The worker died (killed, crashed) each time it ran the job, RESTYLE_CRASH_ATTEMPTS times.
    WORKER_CRASHED = "worker_crashed"
    INTERNAL = "internal_error"


class JobError(BaseModel):
    model_config = ConfigDict(frozen=True)

    code: ErrorCode
    message: str
    # How many times it was tried before it was given up (retried failures only).
    attempts: int | None = None


class StageFailure(Exception):
    """Raised by a stage when the job cannot go on; the agent turns it into a `failed` job."""

    def __init__(self, code: ErrorCode, message: str, attempts: int | None = None):
        super().__init__(message)
        self.error = JobError(code=code, message=message, attempts=attempts)
