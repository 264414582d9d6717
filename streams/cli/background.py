"""`restyle background` as a client of the running stack: stage local photos in storage, publish
one background-replacement batch on restyle.uploads, and follow it on the status API."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

from schemas.uris import join_uri
from streams.adapters.images import IMAGE_SUFFIXES
from streams.adapters.storage import Storage
from streams.cli.client import UPLOAD_CONCURRENCY, api_get, get_json, publish_one
from streams.core.settings import Settings


def local_images(source: str) -> list[tuple[Path, str]]:
    """(path, name) for a local file, or every image under a local directory."""
    path = Path(source).resolve()
    if path.is_file():
        return [(path, path.name)]
    if path.is_dir():
        return [(p, str(p.relative_to(path))) for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    raise FileNotFoundError(f"{source} is neither a file, a directory nor an s3:// URI")


async def stage_sources(settings: Settings, sources: list[str], batch_id: str) -> list[dict]:
    """The batch's image entries: s3:// URIs (and prefixes) as they are; local photos copied to
    uploads/{batch_id}/ in storage first (claim check), so any worker can read them."""
    storage = Storage.from_settings(settings)
    gate = asyncio.Semaphore(UPLOAD_CONCURRENCY)

    async def upload(path: Path, name: str) -> dict:
        uri = join_uri(settings.results_base, "uploads", batch_id, name)
        async with gate:
            await storage.put(uri, await asyncio.to_thread(path.read_bytes))
        return {"uri": uri, "name": name}

    try:
        images: list[dict] = []
        for source in sources:
            if "://" in source:
                images.append({"uri": source})
            else:
                images += await asyncio.gather(*(upload(p, n) for p, n in local_images(source)))
        return images
    finally:
        await storage.close()


async def submit_batch(settings: Settings, sources: list[str], fields: dict,
                       batch_id: str | None = None) -> str:
    batch_id = batch_id or uuid.uuid4().hex
    images = await stage_sources(settings, sources, batch_id)
    if not images:
        raise FileNotFoundError(f"no images in {', '.join(sources)}")
    batch = {"pipeline": "background_replace", "batch_id": batch_id, "images": images,
             **fields}
    await publish_one(settings, settings.topics.uploads, batch_id, json.dumps(batch).encode(),
                      max_request_size=8 * 1024 * 1024)
    return batch_id


# How long a finished batch may take to get its report out before the client shows it without.
REPORT_GRACE_S = 60


def wait_for_batch(settings: Settings, batch_id: str, timeout_s: float, on_change=None) -> dict:
    deadline = time.monotonic() + timeout_s
    last = seen = None
    finished_at = None
    while time.monotonic() < deadline:
        batch = api_get(settings, f"/batches/{batch_id}", absent=(404, 503))
        if batch is not None:
            seen = batch
            if on_change and batch["counts"] != last:
                last = batch["counts"]
                on_change(batch)
            if batch["status"] != "running":
                # Stored as finished just before its report is written: wait for the report,
                # but not forever (a report that failed to write leaves `reporting` set).
                finished_at = finished_at or time.monotonic()
                if not batch.get("reporting") or \
                        time.monotonic() - finished_at > REPORT_GRACE_S:
                    return batch
        time.sleep(0.5)
    if seen is not None and seen["status"] != "running":
        return seen  # finished, but its report never went out: say what is known
    raise TimeoutError(f"batch {batch_id} still running after {timeout_s:.0f}s")


def describe_batch(batch: dict, report: dict | None) -> str:
    """The batch's outcome for a terminal: the summary, the report links, the failures."""
    counts = batch["counts"]
    cancelled = f", {counts['cancelled']} cancelled" if counts.get("cancelled") else ""
    lines = [f"batch {batch['batch_id']}: {batch['status']} — {counts['succeeded']} of "
             f"{counts['total']} images succeeded, {counts['failed']} failed{cancelled} "
             f"(tolerated {batch['tolerated_failure_pct']:g}%)"]
    if batch.get("cancelled_by"):
        lines.append(f"  cancelled by {batch['cancelled_by']}")
    if batch.get("error"):
        lines.append(f"  {batch['error']['code']}: {batch['error']['message']}")
    for kind, link in (batch.get("report") or {}).items():
        lines.append(f"  report ({kind}): {link}")
    for image in (report or {}).get("images", []):
        if image["status"] in ("failed", "cancelled"):
            lines.append(f"  {image['status']:<6} {image['name']}: {image['error']}: "
                         f"{image['cause']}")
        else:
            lines.append(f"  done   {image['name']}: {', '.join(image['outputs'])}")
    return "\n".join(lines)


def read_report(batch: dict) -> dict | None:
    link = (batch.get("report") or {}).get("json")
    if not link or not link.startswith("http"):
        return None
    return get_json(link)
