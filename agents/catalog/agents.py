"""Catalog ingestion as a stream: restyle.catalog → embed (resize + image embedding) → caption
(only products without one) → index (batched) → one outcome per product on
restyle.catalog-events.

Every product ends `indexed`, `deleted` or `failed` with a cause; a bad product never stops the
others. Messages are keyed by product_id (so products spread over partitions and workers);
outcomes are keyed by ingest_id (so one worker folds a whole run into its table).
"""
from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from agents.catalog import stages
from agents.catalog.topics import CatalogTopics
from agents.models.stage_models import StageModels
from schemas import CatalogEvent, CatalogItem, CatalogOutcome, JobError, OutcomeKind
from streams.adapters.images import fit_within
from streams.adapters.index.base import VectorIndex
from streams.core.pipeline import Pipeline
from streams.core.runtime import Runtime

log = logging.getLogger("restyle.catalog")


async def publish(rt: Runtime, outcome: CatalogOutcome) -> None:
    await rt.send(rt.topics.catalog_events, outcome.ingest_id, outcome)


async def failed(rt: Runtime, item: CatalogItem | CatalogEvent, error: JobError) -> None:
    event = item.event if isinstance(item, CatalogItem) else item
    await publish(rt, stages.outcome(event, OutcomeKind.FAILED, error))


async def undecodable(rt: Runtime, raw: bytes | None, error: JobError) -> None:
    """A malformed catalog event is in the DLQ; its ingest run hears of it if it can."""
    outcome = stages.unreadable(raw, error)
    if outcome is not None:
        await publish(rt, outcome)


async def embed(rt: Runtime, models: StageModels, event: CatalogEvent) -> None:
    settings = rt.settings
    item = CatalogItem(event=event)
    if event.action == "delete":
        await rt.send(rt.topics_of(CatalogTopics).index, event.product_id, item)
        return
    started = time.perf_counter()
    image = await rt.image_uncached(event.image, settings.catalog_max_side)
    small = await asyncio.to_thread(fit_within, image, settings.catalog_max_side)
    vectors = await asyncio.to_thread(models.embedder.embed_images, [small])
    item.vector = vectors[0].tolist()
    item.timings_ms["embed"] = round((time.perf_counter() - started) * 1000, 2)
    topics = rt.topics_of(CatalogTopics)
    await rt.send(topics.index if event.caption else topics.caption, event.product_id, item)


async def caption(rt: Runtime, models: StageModels, item: CatalogItem) -> None:
    settings = rt.settings
    started = time.perf_counter()
    image = await rt.image_uncached(item.event.image, settings.catalog_max_side)
    small = await asyncio.to_thread(fit_within, image, settings.catalog_max_side)
    captions = await asyncio.to_thread(models.captioner.caption, [small],
                                       settings.caption_prompt, settings.caption_max_tokens)
    item.caption = captions[0] or None
    item.timings_ms["caption"] = round((time.perf_counter() - started) * 1000, 2)
    await rt.send(rt.topics_of(CatalogTopics).index, item.event.product_id, item)


async def write_batch(rt: Runtime, index: VectorIndex, items: list[CatalogItem]) -> None:
    plan = stages.plan_write(items)
    try:
        refused = {}
        if plan.upserts:
            refused = await index.upsert([stages.product_of(i) for i in plan.upserts],
                                         [i.vector for i in plan.upserts]) or {}
        if plan.deletes:
            await index.delete([i.event.product_id for i in plan.deletes])
    except Exception as exc:  # the index is down or refused the batch: say so per product
        log.exception("catalog index write failed")
        outcomes = stages.write_failed(plan, exc)
    else:
        outcomes = stages.written(plan, refused)
    for outcome in outcomes:
        await publish(rt, outcome)


def register(rt: Runtime, models: StageModels, index: VectorIndex) -> None:
    settings, topics = rt.settings, rt.topics_of(CatalogTopics)
    rt.stage_agent("catalog-embed", partial(embed, rt, models), CatalogEvent,
                   topic=topics.catalog, on_failure=partial(failed, rt),
                   on_undecodable=partial(undecodable, rt))
    rt.stage_agent("catalog-caption", partial(caption, rt, models), CatalogItem,
                   topic=topics.caption, on_failure=partial(failed, rt),
                   chained=True)  # called in-process by catalog-embed (chaining)
    rt.stage_agent("catalog-index", partial(write_batch, rt, index), CatalogItem,
                   topic=topics.index,
                   batch=(settings.catalog_batch_size, settings.catalog_flush_s))


# Catalog events have their own topic (restyle.catalog): no uploads, no jobs.
PIPELINE = Pipeline(name="catalog", register=register, topics=CatalogTopics)
