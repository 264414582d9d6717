"""The contracts every part of restyle speaks: events, job state, parameters, results, errors.

Pure pydantic v2 models, no I/O. Read this package first to know what flows where.
"""
from schemas.errors import ErrorCode, JobError, StageFailure
from schemas.params import MakeoverParams, RenderParams
from schemas.media import Box, Detection, ProductMatch, ImageRef
from schemas.events import (
    UploadEvent,
    MakeoverJob,
    RenderRequest,
    RenderResult,
    JobEvent,
    JobEventKind,
    ResultEvent,
    DeadLetter,
)
from schemas.jobs import JobStatus, JobState, Progress, MakeoverResult
from schemas.catalog import (
    Product,
    ProductHit,
    CatalogEvent,
    CatalogItem,
    CatalogOutcome,
    OutcomeKind,
    IngestState,
    fold_outcome,
)

__all__ = [
    "ErrorCode", "JobError", "StageFailure",
    "MakeoverParams", "RenderParams",
    "Box", "Detection", "ProductMatch", "ImageRef",
    "UploadEvent", "MakeoverJob", "RenderRequest", "RenderResult",
    "JobEvent", "JobEventKind", "ResultEvent", "DeadLetter",
    "JobStatus", "JobState", "Progress", "MakeoverResult", "Product", "ProductHit",
    "CatalogEvent", "CatalogItem", "CatalogOutcome", "OutcomeKind", "IngestState", "fold_outcome",
]
