"""Catalog ingestion throughput through the stream (restyle.catalog → embed → caption → index),
with tiny models, on one CPU worker and on two, measured in one run.

    python bench/catalog_throughput.py [--products 200] [--uncaptioned 0.25] [--broker tansu]

Each run starts a fresh stack, ingests the same products (real interior photos under distinct
ids; a fraction without captions, so the captioning stage runs too) and times from the first
publish until the index has acknowledged every product. Prints products/s per worker count and
the two-worker speed-up.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_products(folder: Path, count: int, uncaptioned: float) -> None:
    import interior_photos

    photos = [Path(p) for p in interior_photos.get_all_photos()]
    folder.mkdir(parents=True)
    rows = ["image,id,category,caption"]
    # Every k-th product has no caption, so the model writes one.
    every = round(1 / uncaptioned) if uncaptioned > 0 else 0
    for n in range(count):
        name = f"product-{n:05d}.jpg"
        shutil.copy(photos[n % len(photos)], folder / name)
        caption = "" if every and n % every == 0 else f"product {n}"
        rows.append(f"{name},product-{n:05d},{'sofa' if n % 2 else 'lamp'},{caption}")
    (folder / "catalog.csv").write_text("\n".join(rows) + "\n")


def run_once(models_dir: Path, products: Path, workers: int, broker: str) -> tuple[float, dict]:
    from streams.cli import catalog
    from streams.core.settings import Settings, load_settings
    from streams.stack.embedded import free_port
    from streams.stack.up import RestyleStack

    state = Path(tempfile.mkdtemp(prefix=f"restyle-catalog-bench-{workers}-"))
    stack = RestyleStack(Settings(state_dir=state, web_port=free_port(), embedded_broker=broker),
                         models=str(models_dir), cpu_workers=workers, gpu_workers=0)
    stack.start()
    try:
        settings = load_settings(state_dir=state)
        # Warm-up: one product through every stage, so model loading is not timed.
        warm = state / "warm"
        warm.mkdir()
        shutil.copy(next(products.glob("*.jpg")), warm / "warm.jpg")
        ingest_id, total = asyncio.run(catalog.start_ingest(settings, str(warm)))
        catalog.wait_for_ingest(settings, ingest_id, total, 300)
        started = time.perf_counter()
        ingest_id, total = asyncio.run(catalog.start_ingest(settings, str(products)))
        state_seen = catalog.wait_for_ingest(settings, ingest_id, total, 1800)
        elapsed = time.perf_counter() - started
        return total / elapsed, {"indexed": state_seen.indexed, "failed": state_seen.failed,
                                 "seconds": round(elapsed, 1)}
    finally:
        stack.stop()
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=200)
    parser.add_argument("--uncaptioned", type=float, default=0.25)
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu")
    args = parser.parse_args()

    from agents.models.tiny import build_tiny_models

    work = Path(tempfile.mkdtemp(prefix="restyle-catalog-bench-"))
    models_dir = build_tiny_models(work / "models")
    products = work / "products"
    write_products(products, args.products, args.uncaptioned)
    rates = {}
    for workers in (1, 2):
        rate, detail = run_once(models_dir, products, workers, args.broker)
        rates[workers] = rate
        print(f"{workers} CPU worker(s): {rate:6.1f} products/s  {detail}")
    print(f"two workers / one: {rates[2] / rates[1]:.2f}x  ({os.cpu_count()} cores here; "
          f"{args.products} products, {args.uncaptioned:.0%} captioned by the model, "
          f"broker {args.broker})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
