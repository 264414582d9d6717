"""The embedded vector index: on disk, shared by every process on the machine.

Small catalogs are searched exactly (a matrix product). Above `ann_threshold` live products an
HNSW graph (faiss) answers instead: exact search is bound by memory bandwidth (~8 ms for 20k x
512-d here), the graph answers in well under 1 ms at recall@10 near 1.0 (bench/index_scale.py).
A category filter is applied inside the graph walk (a bitmap of the category's rows); one with
very few members is searched exactly over just those rows.

HNSW cannot delete, so with a graph an update or delete leaves a tombstone (the old row is kept
but never returned) and the graph is rebuilt once tombstones pass a quarter of the rows.
Another process's writes are picked up through a VERSION token rewritten on every save.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from schemas import Product, ProductHit
from streams.adapters.index.base import normalise

# Below this many candidate rows, exact search beats walking the graph (and is exact).
EXACT_FILTER_ROWS = 1000


class LocalIndex:
    def __init__(self, directory: Path | str, ann_threshold: int = 5_000, ef_search: int = 64,
                 hnsw_m: int = 16, exact_filter_rows: int = EXACT_FILTER_ROWS):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ann_threshold = ann_threshold
        self.ef_search = ef_search
        self.hnsw_m = hnsw_m
        self.exact_filter_rows = exact_filter_rows
        self._rows: list[Product | None] = []  # None marks a tombstone
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self._positions: dict[str, int] = {}
        self._ann = None
        self._selectors: dict[str | None, tuple] = {}  # category -> (rows, faiss selector)
        self._loaded_version: str | None = None

    # --- the async interface (the work is CPU-bound: run it off the event loop) ---
    async def upsert(self, products: list[Product], vectors) -> dict[str, str]:
        await asyncio.to_thread(self.upsert_now, products, vectors)
        return {}  # all or nothing: a bad batch raises

    async def delete(self, product_ids: list[str]) -> None:
        await asyncio.to_thread(self.delete_now, product_ids)

    async def query(self, vector, k: int, category: str | None = None,
                    min_score: float = -1.0) -> list[ProductHit]:
        return await asyncio.to_thread(self.query_now, vector, k, category, min_score)

    async def get(self, product_id: str) -> Product | None:
        return self.get_now(product_id)

    async def count(self) -> int:
        self._refresh()
        return len(self._positions)

    async def close(self) -> None:
        return None

    # --- synchronous core ---
    def upsert_now(self, products: list[Product], vectors) -> None:
        if len(products) != len(vectors):
            raise ValueError("one vector per product")
        vectors = normalise(vectors)
        with self._locked(shared=False):
            self._refresh(already_locked=True)
            if self._vectors.size and self._vectors.shape[1] != vectors.shape[1]:
                raise ValueError(f"index holds {self._vectors.shape[1]}-d vectors; got "
                                 f"{vectors.shape[1]}-d (was the embedding model changed?)")
            latest = {p.product_id: (p, v) for p, v in zip(products, vectors)}  # last one wins
            matrix = self._vectors if self._vectors.size else np.zeros((0, vectors.shape[1]),
                                                                       np.float32)
            if not matrix.flags.writeable:  # mapped from disk (_load): update a copy
                matrix = np.array(matrix)
            appended: list[np.ndarray] = []
            for product_id, (product, vector) in latest.items():
                row = self._positions.get(product_id)
                if row is not None and self._ann is None:
                    self._rows[row] = product  # exact mode updates in place
                    matrix[row] = vector
                    continue
                if row is not None:
                    self._rows[row] = None  # the graph cannot change a vector: tombstone it
                self._positions[product_id] = len(self._rows)
                self._rows.append(product)
                appended.append(vector)
            if appended:
                matrix = np.vstack([matrix, np.stack(appended)])
            self._vectors = matrix
            if self._ann is not None and appended:
                self._ann.add(np.stack(appended))
            self._maintain()
            self._save()

    def delete_now(self, product_ids: list[str]) -> None:
        with self._locked(shared=False):
            self._refresh(already_locked=True)
            for product_id in product_ids:
                row = self._positions.pop(product_id, None)
                if row is not None:
                    self._rows[row] = None
            self._maintain()
            self._save()

    def query_now(self, vector, k: int, category: str | None = None,
                  min_score: float = -1.0) -> list[ProductHit]:
        self._refresh()
        if not self._positions or k <= 0:
            return []
        query = normalise(vector).reshape(-1)
        rows, selector = self._candidates(category)
        if rows is not None and len(rows) == 0:
            return []
        if self._ann is None or (rows is not None and len(rows) <= self.exact_filter_rows):
            found = self._exact(query, k, rows)
        else:
            found = self._graph(query, k, selector)
        return [ProductHit(product=self._rows[row], score=score)
                for row, score in found if score >= min_score]

    def get_now(self, product_id: str) -> Product | None:
        self._refresh()
        row = self._positions.get(product_id)
        return None if row is None else self._rows[row]

    # --- search ---
    def _candidates(self, category: str | None):
        """(rows, selector) to search: None rows means every row is live and eligible."""
        if category is None and len(self._positions) == len(self._rows):
            return None, None
        if category not in self._selectors:
            rows = np.fromiter((row for row, product in enumerate(self._rows)
                                if product is not None
                                and (category is None or product.category == category)),
                               dtype=np.int64)
            self._selectors[category] = (rows, self._bitmap_selector(rows))
        return self._selectors[category]

    def _bitmap_selector(self, rows: np.ndarray):
        if self._ann is None:
            return None
        import faiss

        mask = np.zeros(len(self._rows), dtype=bool)
        mask[rows] = True
        bitmap = np.packbits(mask, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(self._rows), faiss.swig_ptr(bitmap))
        return selector, bitmap  # the selector points into bitmap: keep both alive

    def _exact(self, query: np.ndarray, k: int, rows: np.ndarray | None):
        matrix = self._vectors if rows is None else self._vectors[rows]
        scores = matrix @ query
        take = min(k, len(scores))
        top = np.argpartition(-scores, take - 1)[:take]
        top = top[np.argsort(-scores[top])]
        ids = top if rows is None else rows[top]
        return [(int(i), float(s)) for i, s in zip(ids, scores[top])]

    def _graph(self, query: np.ndarray, k: int, selector):
        import faiss

        params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
        if selector is not None:
            params.sel = selector[0]
        scores, ids = self._ann.search(query[None, :], k, params=params)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    # --- graph upkeep ---
    def _maintain(self) -> None:
        self._selectors.clear()
        live = len(self._positions)
        dead = len(self._rows) - live
        if self._ann is None and live < self.ann_threshold:
            if dead:
                self._compact()
            return
        if self._ann is None or dead > len(self._rows) // 4:
            self._compact()
            self._ann = self._build_graph(self._vectors) if live >= self.ann_threshold else None

    def _compact(self) -> None:
        keep = [row for row, product in enumerate(self._rows) if product is not None]
        self._rows = [self._rows[row] for row in keep]
        self._vectors = self._vectors[keep] if self._vectors.size else self._vectors
        self._positions = {p.product_id: row for row, p in enumerate(self._rows)}

    def _build_graph(self, vectors: np.ndarray):
        import faiss

        graph = faiss.IndexHNSWFlat(vectors.shape[1], self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = 80
        graph.add(vectors)
        return graph

    # --- persistence ---
    @property
    def _version_file(self) -> Path:
        return self.directory / "VERSION"

    def _current_version(self) -> str | None:
        # A fresh token per write (not an mtime, whose resolution varies by filesystem).
        try:
            return self._version_file.read_text()
        except FileNotFoundError:
            return None

    def _refresh(self, already_locked: bool = False) -> None:
        version = self._current_version()
        if version == self._loaded_version:
            return
        if already_locked:
            self._load(version)
        else:
            with self._locked(shared=True):
                self._load(self._current_version())

    def _load(self, version: str | None) -> None:
        self._selectors.clear()
        self._ann = None
        if version is None:
            self._rows, self._vectors, self._positions = [], np.zeros((0, 0), np.float32), {}
        else:
            records = json.loads((self.directory / "products.json").read_text())
            self._rows = [None if r is None else Product(**r) for r in records]
            # Mapped, not read: with a graph (which holds its own copy) only a filtered
            # exact search touches these pages, so a reader keeps ~4 bytes x dims per product
            # out of its resident memory (bench/index_scale.py), and every process on the
            # machine shares the page cache.
            self._vectors = np.load(self.directory / "vectors.npy", mmap_mode="r")
            self._positions = {p.product_id: row for row, p in enumerate(self._rows)
                               if p is not None}
            graph_file = self.directory / "graph.faiss"
            if graph_file.exists():
                import faiss

                self._ann = faiss.read_index(str(graph_file))
        self._loaded_version = version

    def _save(self) -> None:
        np.save(self.directory / "vectors.tmp.npy", self._vectors)
        (self.directory / "products.tmp.json").write_text(
            json.dumps([None if p is None else p.model_dump() for p in self._rows]))
        graph_file = self.directory / "graph.faiss"
        if self._ann is not None:
            import faiss

            faiss.write_index(self._ann, str(self.directory / "graph.tmp.faiss"))
            os.replace(self.directory / "graph.tmp.faiss", graph_file)
        else:
            graph_file.unlink(missing_ok=True)
        os.replace(self.directory / "vectors.tmp.npy", self.directory / "vectors.npy")
        os.replace(self.directory / "products.tmp.json", self.directory / "products.json")
        version = uuid.uuid4().hex
        self._version_file.write_text(version)
        self._loaded_version = version

    @contextmanager
    def _locked(self, shared: bool):
        with open(self.directory / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
