"""Catalog ingestion: product images (plus an optional CSV of id, category, caption) embedded and
indexed; re-ingesting a product updates it in place; a bad product is reported, not fatal."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from agents.images import decode_image, fit_within
from schemas import Product, StageFailure

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
CSV_NAME = "catalog.csv"


@dataclass
class CatalogItem:
    product: Product
    path: Path


@dataclass
class IngestReport:
    indexed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # product id -> cause


def read_catalog_dir(directory: Path) -> list[CatalogItem]:
    """Every image in DIR; DIR/catalog.csv (columns image, id, category, caption) adds metadata.
    Without a caption a product is captioned from its id and category."""
    directory = Path(directory)
    rows = {}
    csv_path = directory / CSV_NAME
    if csv_path.exists():
        with open(csv_path, newline="") as handle:
            for row in csv.DictReader(handle):
                rows[row.get("image") or row.get("id")] = row
    items = []
    for path in sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        row = rows.get(path.name) or rows.get(str(path.relative_to(directory))) or {}
        product_id = row.get("id") or path.stem
        category = row.get("category") or (path.parent.name if path.parent != directory else None)
        caption = row.get("caption") or " ".join(filter(None, [category, product_id]))
        items.append(CatalogItem(Product(product_id=product_id, caption=caption,
                                         category=category, image=path.as_uri()), path))
    return items


def ingest(items: list[CatalogItem], embedder, index, max_pixels: int, max_side: int = 1024,
           batch_size: int = 16, on_progress: Callable[[int], None] | None = None) -> IngestReport:
    report = IngestReport()
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        ready, images = [], []
        for item in batch:
            try:
                image = decode_image(item.path.read_bytes(), max_pixels, str(item.path))
                images.append(fit_within(image, max_side))
                ready.append(item.product)
            except StageFailure as failure:
                report.failed[item.product.product_id] = failure.error.message
            except OSError as exc:
                report.failed[item.product.product_id] = f"cannot read {item.path}: {exc}"
        if ready:
            index.upsert(ready, embedder.embed_images(images))
            report.indexed += [p.product_id for p in ready]
        if on_progress:
            on_progress(len(batch))
    return report
