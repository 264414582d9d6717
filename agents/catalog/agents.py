"""Catalog ingestion as a stream: restyle.catalog → embed (resize + image embedding) → caption
(only products without one) → index (batched) → one outcome per product on
restyle.catalog-events.

Every product ends `indexed`, `deleted` or `failed` with a cause; a bad product never stops the
others. Messages are keyed by product_id (so products spread over partitions and workers);
outcomes are keyed by ingest_id (so one worker folds a whole run into its table).
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import time

from agents.catalog.topics import CatalogTopics
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
from streams.adapters.images import fit_within
from streams.core.pipeline import Pipeline
from streams.core.runtime import Runtime, decode

log = logging.getLogger("restyle.catalog")


def product_of(item: CatalogItem) -> Product:
    """The product as the index stores it: the given caption, else the generated one, else
    its category and id (a product is never stored without any text)."""
    event = item.event
    caption = event.caption or item.caption or " ".join(filter(None, [event.category,
                                                                      event.product_id]))
    return Product(product_id=event.product_id, caption=caption, category=event.category,
                   image=event.image)


def register(rt: Runtime, models, index) -> None:
    app, topics, settings = rt.app, rt.topics, rt.settings

    async def publish(ingest_id: str, product_id: str, ingest_total: int | None,
                      kind: OutcomeKind, error: JobError | None = None,
                      caption: str | None = None) -> None:
        await rt.send("catalog_events", ingest_id, CatalogOutcome(
            ingest_id=ingest_id, product_id=product_id, outcome=kind, ingest_total=ingest_total,
            caption=caption, error=error, at=time.time()))

    async def outcome(event: CatalogEvent, kind: OutcomeKind, error: JobError | None = None,
                      caption: str | None = None) -> None:
        await publish(event.ingest_id, event.product_id, event.ingest_total, kind, error, caption)

    async def failed(item: CatalogItem | CatalogEvent, error: JobError) -> None:
        event = item.event if isinstance(item, CatalogItem) else item
        await outcome(event, OutcomeKind.FAILED, error)

    async def undecodable(raw: bytes | None, error: JobError) -> None:
        """A malformed catalog event is in the DLQ; when its ingest run and product can still
        be read, the run also hears that this product failed (so a waiting ingest does not
        hang)."""
        ids = _readable_ids(raw)
        if ids is not None:
            await publish(*ids, OutcomeKind.FAILED, error)

    async def embed(event: CatalogEvent) -> None:
        item = CatalogItem(event=event)
        if event.action == "delete":
            await rt.send("catalog_index", event.product_id, item)
            return
        started = time.perf_counter()
        image = await rt.image_uncached(event.image, settings.catalog_max_side)
        small = await asyncio.to_thread(fit_within, image, settings.catalog_max_side)
        vectors = await asyncio.to_thread(models.embedder.embed_images, [small])
        item.vector = vectors[0].tolist()
        item.timings_ms["embed"] = round((time.perf_counter() - started) * 1000, 2)
        next_stage = "catalog_index" if event.caption else "catalog_caption"
        await rt.send(next_stage, event.product_id, item)

    async def caption(item: CatalogItem) -> None:
        started = time.perf_counter()
        image = await rt.image_uncached(item.event.image, settings.catalog_max_side)
        small = await asyncio.to_thread(fit_within, image, settings.catalog_max_side)
        captions = await asyncio.to_thread(models.captioner.caption, [small],
                                           settings.caption_prompt, settings.caption_max_tokens)
        item.caption = captions[0] or None
        item.timings_ms["caption"] = round((time.perf_counter() - started) * 1000, 2)
        await rt.send("catalog_index", item.event.product_id, item)

    async def write_batch(items: list[CatalogItem]) -> None:
        # Last event per product wins within a batch (a re-ingest right after an ingest).
        latest = {item.event.product_id: item for item in items}
        upserts = [i for i in latest.values() if i.event.action == "upsert"]
        deletes = [i for i in latest.values() if i.event.action == "delete"]
        try:
            failures = {}
            if upserts:
                failures = await index.upsert([product_of(i) for i in upserts],
                                              [i.vector for i in upserts]) or {}
            if deletes:
                await index.delete([i.event.product_id for i in deletes])
        except Exception as exc:  # the index is down or refused the batch: say so per product
            log.exception("catalog index write failed")
            error = JobError(code=ErrorCode.STORAGE_ERROR,
                             message=f"index write failed: {type(exc).__name__}: {exc}")
            for item in latest.values():
                await failed(item, error)
            return
        for item in upserts:
            cause = failures.get(item.event.product_id)
            if cause:
                await failed(item, JobError(code=ErrorCode.STORAGE_ERROR, message=cause))
            else:
                await outcome(item.event, OutcomeKind.INDEXED, caption=product_of(item).caption)
        for item in deletes:
            await outcome(item.event, OutcomeKind.DELETED)

    @app.agent(topics["catalog"], name="catalog-embed")
    async def catalog_embed(stream):
        async for event in stream.events():
            await rt.handle("catalog-embed", event, CatalogEvent, embed, on_failure=failed,
                            on_undecodable=undecodable)

    @app.agent(topics["catalog_caption"], name="catalog-caption")
    async def catalog_caption(stream):
        async for event in stream.events():
            await rt.handle("catalog-caption", event, CatalogItem, caption, on_failure=failed)

    @app.agent(topics["catalog_index"], name="catalog-index")
    async def catalog_index(stream):
        async for events in stream.take_events(settings.catalog_batch_size,
                                               within=settings.catalog_flush_s):
            items = []
            for event in events:
                try:
                    items.append(decode(event.message.value, CatalogItem))
                except StageFailure as failure:
                    await rt.dead_letter(event.message, failure.error.code,
                                         failure.error.message)
            if items:
                await write_batch(items)


# Catalog events have their own topic (restyle.catalog): no uploads, no jobs.
PIPELINE = Pipeline(name="catalog", register=register, topics=CatalogTopics)


def _readable_ids(raw) -> tuple[str, str, int | None] | None:
    """(ingest_id, product_id, ingest_total) from a message that failed validation, if the
    ids themselves are well formed."""
    try:
        data = json.loads(raw)
        ingest_id, product_id = data.get("ingest_id"), data.get("product_id")
    except Exception:
        return None
    if not (isinstance(ingest_id, str) and re.match(INGEST_ID_PATTERN, ingest_id)
            and isinstance(product_id, str) and product_id):
        return None
    total = data.get("ingest_total")
    return ingest_id, product_id[:256], total if isinstance(total, int) and total > 0 else None
