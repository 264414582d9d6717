"""Catalog products as the vector index stores them, and the catalog ingestion stream.

`restyle.catalog` (public input): one CatalogEvent per product to index or delete.
`restyle.catalog-events` (public output): one CatalogOutcome per product, keyed by ingest_id,
which the status API folds into IngestState (`GET /catalog/ingests/{ingest_id}`).
"""
from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.errors import JobError

INGEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"


class Product(BaseModel):
    product_id: str = Field(min_length=1, max_length=256)
    caption: str
    category: str | None = None
    image: str | None = None


class ProductHit(BaseModel):
    product: Product
    score: float  # cosine similarity, -1..1, on every index backend


class CatalogEvent(BaseModel):
    """What `restyle catalog ingest` (or any upstream system) publishes on `restyle.catalog`."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["upsert", "delete"] = "upsert"
    product_id: str = Field(min_length=1, max_length=256)
    image: str | None = Field(None, min_length=1, max_length=4096)
    category: str | None = Field(None, max_length=256)
    # Without one, the captioning stage writes it from the image.
    caption: str | None = Field(None, max_length=2000)
    # Groups the events of one ingest run, so its progress and failures can be read back.
    ingest_id: str = Field("adhoc", pattern=INGEST_ID_PATTERN)
    # How many products the ingest run holds (lets the status API say when it is finished).
    ingest_total: int | None = Field(None, ge=1)
    schema_version: Literal[1] = 1

    @model_validator(mode="after")
    def _image_for_upserts(self) -> "CatalogEvent":
        if self.action == "upsert" and not self.image:
            raise ValueError("an upsert needs the product's image URI")
        return self


# POST /catalog/ingests takes at most this many products in one request (the CLI sends a
# larger run in parts with the run's `total`).
MAX_INGEST_PRODUCTS = 1000


class IngestRequest(BaseModel):
    """POST /catalog/ingests: products to add, change or delete as one ingest run, or a part of
    one sent in several requests (the same ingest_id, and `total` the run's whole count)."""

    model_config = ConfigDict(extra="forbid")

    ingest_id: str | None = Field(None, pattern=INGEST_ID_PATTERN)
    total: int | None = Field(None, ge=1)
    products: list[CatalogEvent] = Field(min_length=1, max_length=MAX_INGEST_PRODUCTS)


class CatalogItem(BaseModel):
    """A product between the catalog stages (the vector travels; the image does not)."""

    event: CatalogEvent
    vector: list[float] | None = None
    caption: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)


class OutcomeKind(StrEnum):
    INDEXED = "indexed"
    DELETED = "deleted"
    FAILED = "failed"


class CatalogOutcome(BaseModel):
    ingest_id: str
    product_id: str
    outcome: OutcomeKind
    ingest_total: int | None = None
    caption: str | None = None
    error: JobError | None = None
    at: float


class IngestState(BaseModel):
    """One ingest run as `GET /catalog/ingests/{ingest_id}` shows it."""

    ingest_id: str
    total: int | None = None
    indexed: int = 0
    deleted: int = 0
    failed: int = 0
    # Why products failed (the first MAX_LISTED_FAILURES; `failed` counts them all).
    failures: dict[str, JobError] = Field(default_factory=dict)
    finished: bool = False
    updated_at: float = 0.0

    @property
    def processed(self) -> int:
        return self.indexed + self.deleted + self.failed


MAX_LISTED_FAILURES = 1000


def fold_outcome(state: IngestState | None, previous: OutcomeKind | None,
                 outcome: CatalogOutcome) -> IngestState:
    """The ingest run after one product's outcome. `previous` is that product's last outcome in
    this run, so a redelivered outcome counts once and a retry that worked replaces a failure."""
    state = state.model_copy(deep=True) if state else IngestState(ingest_id=outcome.ingest_id)
    if outcome.ingest_total:
        state.total = max(state.total or 0, outcome.ingest_total)
    if previous is outcome.outcome and outcome.outcome is not OutcomeKind.FAILED:
        return state  # a redelivery: already counted
    if previous is not None:
        setattr(state, previous.value, getattr(state, previous.value) - 1)
        state.failures.pop(outcome.product_id, None)
    setattr(state, outcome.outcome.value, getattr(state, outcome.outcome.value) + 1)
    if outcome.outcome is OutcomeKind.FAILED and len(state.failures) < MAX_LISTED_FAILURES:
        state.failures[outcome.product_id] = outcome.error
    state.finished = state.total is not None and state.processed >= state.total
    state.updated_at = max(state.updated_at, outcome.at)
    return state
