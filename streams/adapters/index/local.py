"""The embedded vector index: on disk, shared by every process on the machine.

Small catalogs are searched exactly (a matrix product). Above `ann_threshold` live products an
HNSW graph (faiss) answers instead: exact search is bound by memory bandwidth (~8 ms for 20k x
512-d here), the graph answers in well under 1 ms at recall@10 near 1.0 (bench/index_scale.py).
A category filter is applied inside the graph walk (a bitmap of the category's rows), which
looks at ef_search x sqrt(1 / share) candidates, for a category of at least `walk_min_share` of
the products. A rarer one is searched exactly over just its rows, as is one with so few members
that scoring them all costs less than the walk: a walk through a graph made mostly of refused
rows loses its way (at 1M products, a category of 1/16 kept recall@10 0.93 with the walk
widened 16x, and 0.88 for 1/32 at 32x, against 1.0 searched exactly; bench/index_scale.py).

HNSW cannot delete, so with a graph an update or delete leaves a tombstone (the old row is kept
but never returned) and the graph is rebuilt once tombstones pass a quarter of the rows.
With a graph, a write appends what changed to the files and a whole save comes only every
`checkpoint_rows` changes (local_files.py); every process on the machine reads the same files
and catches up with what was appended when it next looks.
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import math
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from schemas import Product, ProductHit
from streams.adapters.index.base import normalise
from streams.adapters.index.local_files import IndexFiles, Version, apply_changes

log = logging.getLogger("restyle.index")


# What one candidate of a graph walk costs, in rows scored by exact search (512-d, 20k
# products: ~4 us against ~0.7 us; bench/index_scale.py prints both ways for a category).
EXACT_ROWS_PER_CANDIDATE = 6
# Rows scored at a time by exact search over a filter's rows: the gathered block is still in
# cache when it is scored (1.5x faster than gathering them all first, at 62k rows of 512-d).
EXACT_CHUNK_ROWS = 4096


class LocalIndex:
    def __init__(self, directory: Path | str, ann_threshold: int = 5_000, ef_search: int = 64,
                 hnsw_m: int = 16, exact_filter_rows: int | None = None,
                 checkpoint_rows: int = 10_000, widen_filtered: bool = True,
                 walk_min_share: float = 0.1):
        """exact_filter_rows: a filter letting through at most this many rows is searched
        exactly (None: wherever that is cheaper than the widened walk; see _searched_exactly).
        checkpoint_rows: changes appended (rows added or deleted) before the index is saved
        whole again: what a process opening it adds to the saved graph at most.
        widen_filtered: a filtered walk looks at ef_search x sqrt(1 / share) candidates
        (False: ef_search, for comparison in bench/index_scale.py).
        walk_min_share: a filter letting through less than this share of the products is
        searched exactly, however many that is (the walk's recall falls apart below it)."""
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ann_threshold = ann_threshold
        self.ef_search = ef_search
        self.hnsw_m = hnsw_m
        self.exact_filter_rows = exact_filter_rows
        self.checkpoint_rows = checkpoint_rows
        self.widen_filtered = widen_filtered
        self.walk_min_share = walk_min_share
        self._files = IndexFiles(self.directory)
        # Queries and writes run in threads (asyncio.to_thread), and a faiss graph must not
        # be searched while it is added to, nor rows read while they are renumbered.
        self._in_process = threading.RLock()
        self._writer = threading.Lock()  # one writing thread at a time
        self._checkpoint_due = False
        self._rows: list[Product | None] = []  # None marks a tombstone
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self._positions: dict[str, int] = {}
        self._ann = None
        self._selectors: dict[str | None, tuple] = {}  # category -> (rows, faiss selector)
        self._version: Version | None = None  # what this process has read or written
        self._since_checkpoint = 0  # changes appended since the last checkpoint

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
        return self.count_now()

    async def close(self) -> None:
        return None

    # --- synchronous core ---
    def upsert_now(self, products: list[Product], vectors) -> None:
        if len(products) != len(vectors):
            raise ValueError("one vector per product")
        vectors = normalise(vectors)
        with self._writing():
            if self._vectors.size and self._vectors.shape[1] != vectors.shape[1]:
                raise ValueError(f"index holds {self._vectors.shape[1]}-d vectors; got "
                                 f"{vectors.shape[1]}-d (was the embedding model changed?)")
            latest = {p.product_id: (p, v) for p, v in zip(products, vectors)}  # last one wins
            with self._reread_if_failed():
                if self._ann is None:
                    self._upsert_exact(latest, vectors.shape[1])
                else:
                    self._upsert_graph(latest)

    def _upsert_exact(self, latest: dict, dims: int) -> None:
        """Below the graph's threshold the index is small: rows change in place, and every
        write saves it whole."""
        matrix = np.array(self._vectors) if self._vectors.size else np.zeros((0, dims),
                                                                             np.float32)
        appended: list[np.ndarray] = []
        for product_id, (product, vector) in latest.items():
            row = self._positions.get(product_id)
            if row is not None:
                self._rows[row] = product
                matrix[row] = vector
                continue
            self._positions[product_id] = len(self._rows)
            self._rows.append(product)
            appended.append(vector)
        if appended:
            matrix = np.vstack([matrix, np.stack(appended)])
        self._vectors = matrix
        self._maintain()
        self._save(self._vectors)

    def _upsert_graph(self, latest: dict) -> None:
        """The graph cannot change a vector: a changed product's row is deleted and the
        product appended; only what changed is written (local_files.py)."""
        changes, appended = [], []
        for product_id, (product, vector) in latest.items():
            row = self._positions.get(product_id)
            if row is not None:
                self._rows[row] = None
                changes.append((row, None))
            self._positions[product_id] = len(self._rows)
            changes.append((len(self._rows), product))
            self._rows.append(product)
            appended.append(vector)
        added = np.stack(appended)
        self._ann.add(added)
        self._written(added, changes)

    def delete_now(self, product_ids: list[str]) -> None:
        with self._writing(), self._reread_if_failed():
            changes = []
            for product_id in product_ids:
                row = self._positions.pop(product_id, None)
                if row is not None:
                    self._rows[row] = None
                    changes.append((row, None))
            if not changes:
                return
            if self._ann is None:
                self._maintain()
                self._save(self._vectors)
            else:
                self._written(np.zeros((0, self._vectors.shape[1]), np.float32), changes)

    @contextmanager
    def _writing(self):
        """A write: one thread of this process at a time; while it changes what queries
        read, no query of this process (_in_process); and the machine's lock, with what other
        processes wrote caught up with. A checkpoint due after it is written with this
        process's queries going on (it only reads what they read)."""
        with self._writer:
            self._in_process.acquire()
            querying_waits = True
            try:
                with self._locked(shared=False):
                    self._refresh(already_locked=True)
                    yield
                    self._in_process.release()
                    querying_waits = False
                    if self._checkpoint_due:
                        self._checkpoint()
            finally:
                if querying_waits:
                    self._in_process.release()

    def _checkpoint(self) -> None:
        self._checkpoint_due = False
        try:
            self._save(None)  # (the vectors file already holds every row)
        except OSError:
            # The write itself is committed, and memory still matches the files: the next
            # write tries the checkpoint again.
            log.warning("the index's checkpoint failed; its changes stay appended",
                        exc_info=True)

    @contextmanager
    def _reread_if_failed(self):
        """A write changes memory before the files: one that raises part-way (a full disk)
        leaves memory ahead of them, so the files are read again."""
        try:
            yield
        except BaseException:
            self._version = None
            self._catch_up(self._files.version())
            raise

    def _written(self, added: np.ndarray, changes: list) -> None:
        """Append a graph-mode write to the files; then rebuild, or checkpoint, where due."""
        if self._version is None or self._version.format == 1:
            self._save(np.vstack([self._vectors, added]))  # the format's first write
        else:
            self._version = self._files.append(self._version, added, changes)
            self._vectors = self._files.vectors(self._version)
            self._since_checkpoint += len(changes)
        if self._maintain():
            self._save(self._vectors)
        else:  # (written by _writing once queries may run again)
            self._checkpoint_due = self._since_checkpoint >= self.checkpoint_rows

    def query_now(self, vector, k: int, category: str | None = None,
                  min_score: float = -1.0) -> list[ProductHit]:
        with self._in_process:
            return self._query(vector, k, category, min_score)

    def _query(self, vector, k: int, category: str | None,
               min_score: float) -> list[ProductHit]:
        self._refresh()
        if not self._positions or k <= 0:
            return []
        query = normalise(vector).reshape(-1)
        rows, selector = self._candidates(category)
        if rows is not None and len(rows) == 0:
            return []
        if self._ann is None or (rows is not None
                                 and self._searched_exactly(k, len(rows),
                                                            filtered=category is not None)):
            found = self._exact(query, k, rows)
        else:
            found = self._graph(query, k, selector, None if rows is None else len(rows))
        return [ProductHit(product=self._rows[row], score=score)
                for row, score in found if score >= min_score]

    def count_now(self) -> int:
        with self._in_process:
            self._refresh()
            return len(self._positions)

    def get_now(self, product_id: str) -> Product | None:
        with self._in_process:
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
        selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))  # (bytes)
        return selector, bitmap  # the selector points into bitmap: keep both alive

    def _exact(self, query: np.ndarray, k: int, rows: np.ndarray | None):
        if rows is None:
            scores = self._vectors @ query
        else:
            scores = np.empty(len(rows), dtype=np.float32)
            for start in range(0, len(rows), EXACT_CHUNK_ROWS):
                chunk = rows[start:start + EXACT_CHUNK_ROWS]
                scores[start:start + len(chunk)] = self._vectors[chunk] @ query
        take = min(k, len(scores))
        top = np.argpartition(-scores, take - 1)[:take]
        top = top[np.argsort(-scores[top])]
        ids = top if rows is None else rows[top]
        return [(int(i), float(s)) for i, s in zip(ids, scores[top])]

    def _filtered_ef(self, k: int, candidates: int | None) -> int:
        """The walk still passes through rows the filter refuses, so it looks at more
        candidates: sqrt(1 / share) times as many. At 1M products a 1/8 category's recall@10
        was 0.92 at the unfiltered ef 64, 0.975 at 181 (1.4 ms) and 0.981 at 512 (3.7 ms):
        widening by the whole 1/share buys little more, at twice the time."""
        ef = max(self.ef_search, k)
        if candidates and self.widen_filtered:
            ef = int(ef * math.sqrt(len(self._rows) / candidates))
        return ef

    def _searched_exactly(self, k: int, candidates: int, filtered: bool = True) -> bool:
        """Whether to score a filter's rows outright rather than walk the graph: for a
        category too rare for the walk to keep its recall (walk_min_share), and for one small
        enough that scoring it costs less than the walk (then it is both cheaper and exact).
        filtered False: no category, only the live rows (tombstones left out): never rare."""
        if self.exact_filter_rows is not None:
            return candidates <= self.exact_filter_rows
        rare = filtered and candidates < self.walk_min_share * len(self._rows)
        return rare or candidates <= EXACT_ROWS_PER_CANDIDATE * self._filtered_ef(k, candidates)

    def _graph(self, query: np.ndarray, k: int, selector, candidates: int | None = None):
        """candidates: how many rows the filter lets through (None: no filter)."""
        import faiss

        ef = self._filtered_ef(k, candidates if selector is not None else None)
        params = faiss.SearchParametersHNSW(efSearch=ef)
        if selector is not None:
            params.sel = selector[0]
        scores, ids = self._ann.search(query[None, :], k, params=params)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]

    # --- graph upkeep ---
    def _maintain(self) -> bool:
        """Compact, and build or rebuild the graph, where due. True when rows were renumbered
        (the index is then saved whole)."""
        self._selectors.clear()
        live = len(self._positions)
        dead = len(self._rows) - live
        if self._ann is None and live < self.ann_threshold:
            if dead:
                self._compact()
            return bool(dead)
        if self._ann is None or dead > len(self._rows) // 4:
            self._compact()
            self._ann = self._build_graph(self._vectors) if live >= self.ann_threshold else None
            return True
        return False

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

    # --- persistence (local_files.py) ---
    def _refresh(self, already_locked: bool = False) -> None:
        """Catch up with what other processes wrote since this one last looked."""
        version = self._files.version()
        if version == self._version:
            return
        if already_locked:
            self._catch_up(version)
        else:
            with self._locked(shared=True):
                self._catch_up(self._files.version())

    def _catch_up(self, version: Version | None) -> None:
        self._selectors.clear()
        known = self._version
        if version is None:
            self._rows, self._vectors, self._positions = [], np.zeros((0, 0), np.float32), {}
            self._ann, self._since_checkpoint = None, 0
        elif known is not None and known.format == version.format == 2 \
                and known.epoch == version.epoch \
                and known.changes_bytes <= version.changes_bytes:
            # The same checkpoint: only what was appended since is read.
            changes = self._files.changes(version, known.changes_bytes)
            apply_changes(self._rows, self._positions, changes)
            self._vectors = self._files.vectors(version)
            self._since_checkpoint += len(changes)
        else:
            checkpoint = self._files.checkpoint(version)
            self._rows, self._positions = checkpoint.rows, checkpoint.positions
            self._vectors, self._ann = checkpoint.vectors, checkpoint.graph
            self._since_checkpoint = checkpoint.changes
        if self._ann is not None and self._ann.ntotal < len(self._rows):
            # Rows appended since the graph was saved (added in other batches than the
            # writer's: its graph and this one may differ a little, both valid).
            self._ann.add(np.ascontiguousarray(self._vectors[self._ann.ntotal:]))
        self._version = version

    def _save(self, vectors: np.ndarray | None) -> None:
        """A checkpoint of the whole index (vectors None: the vectors file is current)."""
        dims = self._vectors.shape[1] if self._vectors.ndim == 2 else 0
        self._version = self._files.save(self._rows, vectors, dims, self._ann, self._version)
        # Mapped from the file from now on: an in-memory copy (after a compaction) goes.
        self._vectors = self._files.vectors(self._version)
        self._since_checkpoint = 0

    @contextmanager
    def _locked(self, shared: bool):
        with open(self.directory / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
