"""Vector index at catalog scale, measured in one run (this machine is shared and noisy, so
compare the printed ratios rather than absolute times).

Embedded index: N products x D dims (default 100k x 512), clustered like real embeddings.
Prints p50/p95 query latency of exact search and of the HNSW graph, their ratio, recall@10 of the
graph against exact search, and filtered queries' latency and recall for categories of 1/8 to
1/64 of the products (each walked at the unfiltered ef, walked widened, searched exactly; and,
with --filtered-efs, walked at each ef given). Targets (issue 3): p50 <= 2 ms, recall@10 >= 0.95.

OpenSearch (`--opensearch`, or RESTYLE_OPENSEARCH_URL): bulk ingest rate (vectors/s) and p50
k-NN latency at --os-products (default 10k), starting a local node from Maven Central artifacts
when no URL is given.

    python bench/index_scale.py [--products 100000] [--dim 512] [--queries 300] [--opensearch]
                                [--filtered-efs 128,256,512]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas import Product  # noqa: E402


def clustered(n: int, n_queries: int, dim: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Products around n/100 centres (like embeddings of product families), and queries drawn
    the same way (a photo's crop resembles some family), all unit length."""
    centers = rng.normal(size=(max(10, n // 100), dim)).astype(np.float32)

    def around(count: int) -> np.ndarray:
        vectors = centers[rng.integers(0, len(centers), count)]
        vectors = vectors + 0.6 * rng.normal(size=(count, dim)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    return around(n), around(n_queries)


CATEGORIES = ["sofa", "chair", "lamp", "table", "rug", "bed", "shelf", "plant"]
# The filtered queries, categories from common to rare: name -> (1/share, offset), product i
# being in it when i % (1/share) == offset (the rarer ones are carved out of the others).
FILTERS = {"lamp": (8, 2), "desk": (16, 7), "mirror": (32, 13), "vase": (64, 5)}


def catalog(n: int) -> list[Product]:
    def category(i: int) -> str:
        return next((name for name, (share, offset) in FILTERS.items()
                     if i % share == offset), CATEGORIES[i % len(CATEGORIES)])

    return [Product(product_id=f"p{i}", caption=f"product {i}", category=category(i))
            for i in range(n)]


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q) * 1000)


def timed_queries(query, queries: np.ndarray, **kwargs) -> tuple[list[float], list[set]]:
    latencies, found = [], []
    for vector in queries:
        started = time.perf_counter()
        hits = query(vector, 10, **kwargs)
        latencies.append(time.perf_counter() - started)
        found.append({h.product.product_id for h in hits})
    return latencies, found


def exact_top10(vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray | None = None,
                chunk: int = 100_000) -> list[set]:
    """The true 10 nearest products of each query, by brute force in chunks (memory-bound:
    one pass over the vectors for all queries at once)."""
    rows = np.arange(len(vectors)) if rows is None else rows
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(rows), chunk):
        ids = rows[start:start + chunk]
        scores = queries @ vectors[ids].T
        best_scores = np.hstack([best_scores, scores])
        best_ids = np.hstack([best_ids, np.broadcast_to(ids, scores.shape)])
        keep = np.argpartition(-best_scores, 9, axis=1)[:, :10]
        best_scores = np.take_along_axis(best_scores, keep, 1)
        best_ids = np.take_along_axis(best_ids, keep, 1)
    return [{f"p{i}" for i in row} for row in best_ids]


def memory_mib(field: str = "VmRSS") -> float:
    """This process's resident (VmRSS) or peak resident (VmHWM) memory, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def directory_mib(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file()) / 2**20


# Run in a fresh process: what a worker that opens the index adds to its memory, and how long
# opening takes (the first query after a start, or after another process wrote).
OPEN_PROBE = """
import sys, time, numpy as np
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from streams.adapters.index.local import LocalIndex
def rss():
    lines = Path("/proc/self/status").read_text().splitlines()
    return int([l for l in lines if l.startswith("VmRSS:")][0].split()[1]) / 1024
import faiss  # counted as the interpreter's, not the index's
before = rss()
started = time.perf_counter()
index = LocalIndex(Path(sys.argv[1]), ann_threshold=1)
index.query_now(np.ones(int(sys.argv[3]), np.float32), 10)
print(time.perf_counter() - started, rss() - before)
"""


def open_in_fresh_process(directory: Path, dim: int) -> tuple[float, float]:
    import subprocess

    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", OPEN_PROBE, str(directory), root, str(dim)],
                         check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def filtered_queries(graph, vectors: np.ndarray, queries: np.ndarray, category: str,
                     rows: np.ndarray, efs: tuple[int, ...]) -> dict[str, tuple[list, float]]:
    """One category's query: walked at the unfiltered ef, walked at the widened ef, searched
    exactly over the category's rows (the index picks one of the last two by their estimated
    cost), and walked at each of efs (the trade between latency and recall, as a curve):
    each way's latencies and recall@10."""
    truth = exact_top10(vectors, queries, rows)
    n, candidates = len(vectors), len(rows)
    chosen = "exact" if graph._searched_exactly(10, candidates) else "widened"
    ways = [("unfiltered ef", "walked at the unfiltered ef", dict(widen_filtered=False,
                                                                   exact_filter_rows=0)),
            ("widened", f"walked, ef widened to {graph._filtered_ef(10, candidates)}",
             dict(exact_filter_rows=0)),
            ("exact", "searched exactly", dict(exact_filter_rows=n))]
    ways += [("ef", f"walked at ef {ef}", dict(widen_filtered=False, exact_filter_rows=0,
                                               ef_search=ef)) for ef in efs]
    runs, defaults = {}, dict(widen_filtered=graph.widen_filtered, ef_search=graph.ef_search,
                              exact_filter_rows=graph.exact_filter_rows)
    for kind, way, settings in ways:
        for name, value in {**defaults, **settings}.items():
            setattr(graph, name, value)
        latencies, found = timed_queries(graph.query_now, queries, category=category)
        runs[way + (" (the default's choice)" if kind == chosen else "")] = (
            latencies, np.mean([len(t & f) / 10 for t, f in zip(truth, found)]))
    for name, value in defaults.items():
        setattr(graph, name, value)
    return runs


def bench_embedded(n: int, dim: int, n_queries: int, rng,
                   filtered_efs: tuple[int, ...] = ()) -> None:
    from streams.adapters.index.local import LocalIndex

    vectors, queries = clustered(n, n_queries, dim, rng)
    products = catalog(n)
    baseline_mib = memory_mib()
    with tempfile.TemporaryDirectory() as work:
        graph = LocalIndex(Path(work) / "graph", ann_threshold=1)
        started = time.perf_counter()
        graph.upsert_now(products, vectors)
        graph_build = time.perf_counter() - started
        built_mib = memory_mib() - baseline_mib
        on_disk = directory_mib(Path(work) / "graph")
        open_s, open_rss = open_in_fresh_process(Path(work) / "graph", dim)

        truth = exact_top10(vectors, queries)
        filtered = {category: np.flatnonzero(np.arange(n) % share == offset)
                    for category, (share, offset) in FILTERS.items()}
        exact_lat = []
        for vector in queries[:30]:  # brute force, as the index does below ann_threshold
            started = time.perf_counter()
            graph._exact(vector, 10, None)
            exact_lat.append(time.perf_counter() - started)
        graph_lat, found = timed_queries(graph.query_now, queries)
        recall = np.mean([len(t & f) / 10 for t, f in zip(truth, found)])
        filtered_runs = {category: filtered_queries(graph, vectors, queries, category, rows,
                                                    filtered_efs)
                         for category, rows in filtered.items()}

        # A catalog ingest writes in small batches: what one costs on an index this size
        # (appended to the files), what the checkpoint every RESTYLE_INDEX_CHECKPOINT_ROWS
        # changes costs, and what a reader pays to catch up with a write.
        reader = LocalIndex(Path(work) / "graph", ann_threshold=1)
        reader.query_now(queries[0], 10)
        small_upserts, catch_ups = [], []
        for batch in range(5):
            extra = clustered(32, 0, dim, rng)[0]
            started = time.perf_counter()
            graph.upsert_now([Product(product_id=f"new{batch}-{i}", caption="new",
                                      category="lamp") for i in range(32)], extra)
            small_upserts.append(time.perf_counter() - started)
            started = time.perf_counter()
            reader.query_now(queries[1], 10)
            catch_ups.append(time.perf_counter() - started)
        started = time.perf_counter()
        with graph._locked(shared=False):
            graph._save(None)
        checkpoint_s = time.perf_counter() - started

    print(f"embedded index: {n:,} products x {dim}-d, {n_queries} queries, k=10")
    print(f"  build (one upsert of all products, HNSW M=16 efConstruction=80): "
          f"{graph_build:.1f} s ({n / graph_build:,.0f} products/s)")
    print(f"  memory: the building process grew {built_mib:,.0f} MiB (peak RSS "
          f"{memory_mib('VmHWM'):,.0f} MiB); opening it adds {open_rss:,.0f} MiB to a "
          f"process's RSS, in {open_s:.1f} s; on disk {on_disk:,.0f} MiB")
    print(f"  exact search   p50 {percentile_ms(exact_lat, 50):8.3f} ms   "
          f"p99 {percentile_ms(exact_lat, 99):8.3f} ms   ({len(exact_lat)} queries)")
    print(f"  HNSW graph     p50 {percentile_ms(graph_lat, 50):8.3f} ms   "
          f"p95 {percentile_ms(graph_lat, 95):8.3f} ms   "
          f"p99 {percentile_ms(graph_lat, 99):8.3f} ms   (target p50 <= 2 ms)")
    print(f"  graph speed-up over exact (p50): "
          f"{np.median(exact_lat) / np.median(graph_lat):.1f}x")
    print(f"  recall@10 vs exact: {recall:.3f}   (target >= 0.95)")
    for category, runs in filtered_runs.items():
        share = FILTERS[category][0]
        for walk, (latencies, filtered_recall) in runs.items():
            print(f"  category filter (1/{share} of products), {walk}: p50 "
                  f"{percentile_ms(latencies, 50):.3f} ms, p99 "
                  f"{percentile_ms(latencies, 99):.3f} ms, recall@10 {filtered_recall:.3f}")
    print(f"  one upsert of 32 products into it (appended): median "
          f"{np.median(small_upserts) * 1000:.1f} ms of {len(small_upserts)}; another process "
          f"catches up in {np.median(catch_ups) * 1000:.1f} ms (median)")
    print(f"  a checkpoint (the whole index saved, every {graph.checkpoint_rows:,} changes): "
          f"{checkpoint_s:.2f} s; full save / appended write: "
          f"{checkpoint_s / np.median(small_upserts):.0f}x")


async def bench_opensearch(url: str, n: int, dim: int, n_queries: int, rng) -> None:
    from streams.adapters.index.opensearch import OpenSearchIndex
    from streams.core.settings import Settings

    vectors, queries = clustered(n, n_queries, dim, rng)
    products = catalog(n)
    rates = {}
    for refresh in ("wait_for", "false"):  # the pipeline's default, then a pure bulk load
        index = OpenSearchIndex.from_settings(Settings(
            opensearch_url=url, opensearch_index=f"bench-{refresh}-{os.getpid()}",
            opensearch_refresh=refresh))
        started = time.perf_counter()
        for start in range(0, n, 500):
            failures = await index.upsert(products[start:start + 500], vectors[start:start + 500])
            assert not failures, failures
        await index.refresh_now()
        rates[refresh] = n / (time.perf_counter() - started)
        if refresh == "wait_for":
            await index.drop()
            await index.close()
    try:
        for vector in queries[:20]:  # warm-up: the first queries load the graph segments
            await index.query(vector, 10)
        latencies, found = [], []
        for vector in queries:
            began = time.perf_counter()
            hits = await index.query(vector, 10)
            latencies.append(time.perf_counter() - began)
            found.append({h.product.product_id for h in hits})
        truth = [{f"p{i}" for i in np.argsort(-(vectors @ q))[:10]} for q in queries]
        recall = np.mean([len(t & f) / 10 for t, f in zip(truth, found)])
        print(f"OpenSearch ({index.engine}, {index.space}): {n:,} products x {dim}-d")
        print(f"  bulk ingest, batches of 500: {rates['false']:,.0f} vectors/s with refresh=false"
              f" (+ one refresh at the end); {rates['wait_for']:,.0f} vectors/s with "
              f"refresh=wait_for (the pipeline's default: indexed means searchable)")
        print(f"  k-NN query  p50 {percentile_ms(latencies, 50):.2f} ms   "
              f"p95 {percentile_ms(latencies, 95):.2f} ms   recall@10 {recall:.3f}")
    finally:
        await index.drop()
        await index.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--opensearch", action="store_true")
    parser.add_argument("--os-products", type=int, default=10_000)
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--filtered-efs", default="",
                        help="also walk the category filter at these efs (e.g. 128,256,384) "
                             "and print each one's latency and recall")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    if not args.skip_embedded:
        bench_embedded(args.products, args.dim, args.queries, rng,
                       tuple(int(ef) for ef in args.filtered_efs.split(",") if ef))
    url = os.environ.get("RESTYLE_OPENSEARCH_URL")
    if args.opensearch or url:
        node = None
        if not url:
            from streams.stack.opensearch_node import start_opensearch

            node, url = start_opensearch(Path(tempfile.mkdtemp(prefix="restyle-os-")),
                                         heap="1g", quick_start=False)
        try:
            asyncio.run(bench_opensearch(url, args.os_products, args.dim, args.queries, rng))
        finally:
            if node:
                node.stop()


if __name__ == "__main__":
    main()
