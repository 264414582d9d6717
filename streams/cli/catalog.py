"""`restyle catalog ingest` as a client of the running stack: list the products in a directory or
under an S3 prefix, publish one event per product on restyle.catalog (against a remote install,
through POST /catalog/ingests, the images through POST /uploads), then follow the ingest run on
the status API until the index has acknowledged every product.

A directory may hold `catalog.csv` (columns image, id, category, caption). Local images outside
the workers' file roots are first copied to storage (claim check), so any worker can read them.
"""
from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agents.catalog.topics import CatalogTopics
from schemas import CatalogEvent, IngestState, StageFailure
from schemas.uris import join_uri, parse_uri
from streams.adapters.images import IMAGE_SUFFIXES
from streams.adapters.storage import Storage
from streams.cli import remote
from streams.cli.client import UPLOAD_CONCURRENCY, api_get, kafka_producer
from streams.core.settings import Settings

CSV_NAME = "catalog.csv"


class DuplicateProductIds(ValueError):
    """Two or more images of a source would become the same product: the run would store one
    and wait for the other forever, so it is refused before anything is published."""

    def __init__(self, clashes: dict[str, list[str]]):
        self.clashes = clashes
        lines = [f"product id {product_id!r} comes from {len(names)} images: {', '.join(names)}"
                 for product_id, names in clashes.items()]
        super().__init__("every image must be a distinct product; give them distinct file names "
                         f"or ids in {CSV_NAME}:\n  " + "\n  ".join(lines))


@dataclass
class SourceProduct:
    event: CatalogEvent
    local_path: Path | None = None  # set when the image still has to be uploaded


def products_from_listing(names: list[str], rows: dict[str, dict],
                          category_from_folder: bool) -> list[tuple[str, dict]]:
    """(relative image name, fields) for every image name; pure, shared by DIR and S3 sources.
    CSV rows (keyed by image name or relative path) give id, category and caption. A product
    id is the CSV's id or the file's stem; two images with one id are refused by name."""
    products = []
    for name in sorted(names):
        path = PurePosixPath(name)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        row = rows.get(path.name) or rows.get(name) or {}
        folder = path.parent.name if len(path.parts) > 1 else None
        category = row.get("category") or (folder if category_from_folder else None)
        products.append((name, {"product_id": row.get("id") or path.stem,
                                "category": category or None,
                                "caption": row.get("caption") or None}))
    refuse_duplicate_ids(products)
    return products


def refuse_duplicate_ids(products: list[tuple[str, dict]]) -> None:
    names_by_id: dict[str, list[str]] = {}
    for name, fields in products:
        names_by_id.setdefault(fields["product_id"], []).append(name)
    clashes = {pid: names for pid, names in names_by_id.items() if len(names) > 1}
    if clashes:
        raise DuplicateProductIds(clashes)


def read_csv_rows(text: str) -> dict[str, dict]:
    return {row.get("image") or row.get("id"): row for row in csv.DictReader(io.StringIO(text))}


async def list_source(storage: Storage, source: str, category_from_folder: bool,
                      ingest_id: str) -> list[SourceProduct]:
    if source.startswith("s3://"):
        prefix = source if source.endswith("/") else source + "/"
        uris = await storage.list(prefix)
        names = [uri[len(prefix):] for uri in uris]
        rows = {}
        if CSV_NAME in names:
            rows = read_csv_rows((await storage.get(prefix + CSV_NAME)).decode("utf-8-sig"))
        return [SourceProduct(CatalogEvent(image=prefix + name, ingest_id=ingest_id, **fields))
                for name, fields in products_from_listing(names, rows, category_from_folder)]
    directory = Path(source).resolve()
    if not directory.is_dir():
        raise FileNotFoundError(f"{source} is neither a directory nor an s3:// prefix")
    names = [str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()]
    csv_path = directory / CSV_NAME
    rows = read_csv_rows(csv_path.read_text(encoding="utf-8-sig")) if csv_path.exists() else {}
    products = []
    for name, fields in products_from_listing(names, rows, category_from_folder):
        path = directory / name
        products.append(SourceProduct(CatalogEvent(image=path.as_uri(), ingest_id=ingest_id,
                                                   **fields), local_path=path))
    return products


async def stage_local_images(storage: Storage, settings: Settings,
                             products: list[SourceProduct]) -> None:
    """Copy local images the workers cannot read (outside their file roots) into storage."""
    gate = asyncio.Semaphore(UPLOAD_CONCURRENCY)

    async def upload(product: SourceProduct) -> None:
        try:
            parse_uri(product.event.image, storage.file_roots)
            return  # readable where it is
        except StageFailure:
            pass  # outside the file roots: copy it into storage
        uri = join_uri(settings.results_base, "catalog", "images",
                       product.event.product_id + product.local_path.suffix.lower())
        async with gate:
            await storage.put(uri, await asyncio.to_thread(product.local_path.read_bytes))
        product.event = product.event.model_copy(update={"image": uri})

    await asyncio.gather(*(upload(p) for p in products if p.local_path is not None))


async def publish(settings: Settings, events: list[CatalogEvent]) -> None:
    async with kafka_producer(settings, linger_ms=5) as producer:
        sends = [await producer.send(CatalogTopics().catalog,
                                     event.model_dump_json(exclude_none=True).encode(),
                                     key=event.product_id.encode()) for event in events]
        await asyncio.gather(*sends)


async def upload_local_images(settings: Settings, products: list[SourceProduct]) -> None:
    """A remote install: local images travel through its API (POST /uploads)."""
    local = [product for product in products if product.local_path is not None]
    uris = await remote.upload_files(settings, [product.local_path for product in local])
    for product, uri in zip(local, uris):
        product.event = product.event.model_copy(update={"image": uri})


async def start_ingest(settings: Settings, source: str, category_from_folder: bool = False,
                       ingest_id: str | None = None) -> tuple[str, int]:
    """Publish every product of source, on the catalog topic or, against a remote install,
    through its API; returns (ingest_id, how many were published)."""
    ingest_id = ingest_id or f"ingest-{uuid.uuid4().hex[:12]}"
    far = remote.is_remote(settings)
    storage = Storage.from_settings(settings)
    try:
        products = await list_source(storage, source, category_from_folder, ingest_id)
        if not far:
            await stage_local_images(storage, settings, products)
    finally:
        await storage.close()
    if far:
        await upload_local_images(settings, products)
    total = len(products)
    events = [p.event.model_copy(update={"ingest_total": total}) for p in products]
    if events:
        await (remote.publish_products(settings, ingest_id, events) if far
               else publish(settings, events))
    return ingest_id, total


def get_ingest(settings: Settings, ingest_id: str) -> IngestState | None:
    """The run so far; None until its first outcome is in (404) or while partitions move (503)."""
    body = api_get(settings, f"/catalog/ingests/{ingest_id}", absent=(404, 503))
    return None if body is None else IngestState.model_validate(body)


def wait_for_ingest(settings: Settings, ingest_id: str, total: int, timeout_s: float = 3600,
                    on_progress=None) -> IngestState:
    """Poll until the index has acknowledged every product (indexed, deleted or failed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = get_ingest(settings, ingest_id)
        if state is not None:
            if on_progress:
                on_progress(state)
            if state.processed >= total:
                return state
        time.sleep(0.25)
    raise TimeoutError(f"ingest {ingest_id}: not every product was acknowledged within "
                       f"{timeout_s:.0f}s")


def describe_ingest(state: IngestState) -> str:
    lines = [f"ingest {state.ingest_id}: {state.indexed} indexed, {state.deleted} deleted, "
             f"{state.failed} failed"]
    for product_id, error in state.failures.items():
        lines.append(f"  failed {product_id}: [{error.code}] {error.message}")
    return "\n".join(lines)
