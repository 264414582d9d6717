"""Catalog ingestion's stages as plain functions: what the index stores for a product, how a
batch of products becomes one index write, and the outcome each product gets from it."""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from schemas import (
    CatalogEvent,
    CatalogItem,
    CatalogOutcome,
    ErrorCode,
    JobError,
    OutcomeKind,
    Product,
    StageFailure,
)
from schemas.catalog import INGEST_ID_PATTERN


def product_of(item: CatalogItem) -> Product:
    """The product as the index stores it: the given caption, else the generated one, else
    its category and id (a product is never stored without any text)."""
    event = item.event
    caption = event.caption or item.caption or " ".join(filter(None, [event.category,
                                                                      event.product_id]))
    return Product(product_id=event.product_id, caption=caption, category=event.category,
                   image=event.image)


@dataclass
class WritePlan:
    """One index write for a batch: the last event per product wins (a re-ingest right after an
    ingest), split into upserts and deletes."""
    upserts: list[CatalogItem]
    deletes: list[CatalogItem]

    @property
    def items(self) -> list[CatalogItem]:
        return self.upserts + self.deletes


def plan_write(items: list[CatalogItem]) -> WritePlan:
    latest = {item.event.product_id: item for item in items}
    return WritePlan(upserts=[i for i in latest.values() if i.event.action == "upsert"],
                     deletes=[i for i in latest.values() if i.event.action == "delete"])


def outcome(event: CatalogEvent, kind: OutcomeKind, error: JobError | None = None,
            caption: str | None = None, at: float | None = None) -> CatalogOutcome:
    return CatalogOutcome(ingest_id=event.ingest_id, product_id=event.product_id, outcome=kind,
                          ingest_total=event.ingest_total, caption=caption, error=error,
                          at=time.time() if at is None else at)


def written(plan: WritePlan, refused: dict[str, str]) -> list[CatalogOutcome]:
    """Each product's outcome once the index took the write; refused: {product_id: cause} for
    upserts the index turned down one by one."""
    outcomes = []
    for item in plan.upserts:
        cause = refused.get(item.event.product_id)
        if cause:
            outcomes.append(outcome(item.event, OutcomeKind.FAILED,
                                    JobError(code=ErrorCode.STORAGE_ERROR, message=cause)))
        else:
            outcomes.append(outcome(item.event, OutcomeKind.INDEXED,
                                    caption=product_of(item).caption))
    outcomes += [outcome(item.event, OutcomeKind.DELETED) for item in plan.deletes]
    return outcomes


def write_failed(plan: WritePlan, exc: Exception) -> list[CatalogOutcome]:
    """The index is down or refused the whole batch: every product hears why (with the
    attempts, when it stayed unavailable for the whole retry budget)."""
    if isinstance(exc, StageFailure):
        error = exc.error.model_copy(update={"message": f"index write failed: {exc}"})
    else:
        error = JobError(code=ErrorCode.STORAGE_ERROR,
                         message=f"index write failed: {type(exc).__name__}: {exc}")
    return [outcome(item.event, OutcomeKind.FAILED, error) for item in plan.items]


def unreadable(raw, error: JobError) -> CatalogOutcome | None:
    """A `failed` outcome for a catalog event that failed validation, when its ingest run and
    product can still be read (so a waiting ingest does not hang); else None."""
    try:
        data = json.loads(raw)
        ingest_id, product_id = data.get("ingest_id"), data.get("product_id")
    except Exception:
        return None
    if not (isinstance(ingest_id, str) and re.fullmatch(INGEST_ID_PATTERN, ingest_id)
            and isinstance(product_id, str) and product_id):
        return None
    total = data.get("ingest_total")
    return CatalogOutcome(ingest_id=ingest_id, product_id=product_id[:256],
                          outcome=OutcomeKind.FAILED, error=error, at=time.time(),
                          ingest_total=total if isinstance(total, int) and total > 0 else None)
