"""The contracts every part of restyle speaks: events, job state, parameters, results, errors.

Pure pydantic v2 models, no I/O. Read this package first to know what flows where.
"""
from pathlib import Path

from schemas.catalog import (
    CatalogEvent,
    CatalogItem,
    CatalogOutcome,
    IngestState,
    OutcomeKind,
    Product,
    ProductHit,
    fold_outcome,
)
from schemas.errors import ErrorCode, JobError, StageFailure
from schemas.events import (
    DeadLetter,
    JobEvent,
    JobEventKind,
    RenderRequest,
    RenderResult,
    ResultEvent,
)
from schemas.jobs import JobState, JobStatus, Progress
from schemas.makeover import MakeoverJob, MakeoverParams, MakeoverResult, MakeoverUpload
from schemas.media import Box, Detection, ImageRef, ProductMatch
from schemas.params import RenderParams

# The published contracts written from these models (`restyle contracts`): JSON Schemas,
# AsyncAPI and the status API's OpenAPI, installed with the package.
CONTRACTS_DIR = Path(__file__).parent / "contracts"

__all__ = [
    "ErrorCode", "JobError", "StageFailure",
    "MakeoverParams", "RenderParams",
    "Box", "Detection", "ProductMatch", "ImageRef",
    "MakeoverUpload", "MakeoverJob", "RenderRequest", "RenderResult",
    "CONTRACTS_DIR",
    "JobEvent", "JobEventKind", "ResultEvent", "DeadLetter",
    "JobStatus", "JobState", "Progress", "MakeoverResult", "Product", "ProductHit",
    "CatalogEvent", "CatalogItem", "CatalogOutcome", "OutcomeKind", "IngestState", "fold_outcome",
]
