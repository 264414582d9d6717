"""The vector index of catalog products.

`VectorIndex` is the small interface every backend implements (the embedded one here; OpenSearch
later). `LocalIndex` is exact cosine search over a matrix kept on disk, reloaded when another
process (e.g. `restyle catalog ingest`) changes it.
"""
from __future__ import annotations

import fcntl
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np

from schemas import Product, ProductHit


class VectorIndex(Protocol):
    def upsert(self, products: list[Product], vectors: np.ndarray) -> None: ...
    def delete(self, product_ids: list[str]) -> None: ...
    def query(self, vector: np.ndarray, k: int, category: str | None = None,
              min_score: float = -1.0) -> list[ProductHit]: ...
    def get(self, product_id: str) -> Product | None: ...
    def count(self) -> int: ...


class LocalIndex:
    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._products: list[Product] = []
        self._vectors = np.zeros((0, 0), dtype=np.float32)
        self._positions: dict[str, int] = {}
        self._loaded_version: str | None = None

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

    def _refresh(self) -> None:
        version = self._current_version()
        if version == self._loaded_version:
            return
        with self._locked(shared=True):
            if version is None:
                self._products, self._vectors = [], np.zeros((0, 0), dtype=np.float32)
            else:
                records = json.loads((self.directory / "products.json").read_text())
                self._products = [Product(**r) for r in records]
                self._vectors = np.load(self.directory / "vectors.npy")
            self._positions = {p.product_id: i for i, p in enumerate(self._products)}
            self._loaded_version = version

    def _save(self) -> None:
        np.save(self.directory / "vectors.tmp.npy", self._vectors)
        (self.directory / "products.tmp.json").write_text(
            json.dumps([p.model_dump() for p in self._products]))
        os.replace(self.directory / "vectors.tmp.npy", self.directory / "vectors.npy")
        os.replace(self.directory / "products.tmp.json", self.directory / "products.json")
        self._version_file.write_text(uuid.uuid4().hex)
        self._loaded_version = self._current_version()

    @contextmanager
    def _locked(self, shared: bool):
        with open(self.directory / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # --- the interface ---
    def upsert(self, products: list[Product], vectors: np.ndarray) -> None:
        if len(products) != len(vectors):
            raise ValueError("one vector per product")
        self._refresh()
        with self._locked(shared=False):
            vectors = _normalise(np.asarray(vectors, dtype=np.float32))
            if self._vectors.size and self._vectors.shape[1] != vectors.shape[1]:
                raise ValueError(f"index holds {self._vectors.shape[1]}-d vectors; got "
                                 f"{vectors.shape[1]}-d (was the embedding model changed?)")
            matrix = self._vectors if self._vectors.size else np.zeros((0, vectors.shape[1]),
                                                                       np.float32)
            additions = []
            for product, vector in zip(products, vectors):
                position = self._positions.get(product.product_id)
                if position is None:
                    self._positions[product.product_id] = len(self._products) + len(additions)
                    additions.append((product, vector))
                else:  # re-ingesting a product updates it in place
                    self._products[position] = product
                    matrix[position] = vector
            if additions:
                self._products.extend(p for p, _ in additions)
                matrix = np.vstack([matrix, np.stack([v for _, v in additions])])
            self._vectors = matrix
            self._save()

    def delete(self, product_ids: list[str]) -> None:
        self._refresh()
        with self._locked(shared=False):
            keep = [i for i, p in enumerate(self._products) if p.product_id not in set(product_ids)]
            self._products = [self._products[i] for i in keep]
            self._vectors = self._vectors[keep] if self._vectors.size else self._vectors
            self._positions = {p.product_id: i for i, p in enumerate(self._products)}
            self._save()

    def query(self, vector: np.ndarray, k: int, category: str | None = None,
              min_score: float = -1.0) -> list[ProductHit]:
        self._refresh()
        if not self._products or k <= 0:
            return []
        scores = self._vectors @ _normalise(np.asarray(vector, np.float32)[None, :])[0]
        if category is not None:
            mask = np.array([p.category == category for p in self._products])
            scores = np.where(mask, scores, -np.inf)
        take = min(k, len(scores))
        top = np.argpartition(-scores, take - 1)[:take]
        top = top[np.argsort(-scores[top])]
        return [ProductHit(product=self._products[i], score=float(scores[i]))
                for i in top if np.isfinite(scores[i]) and scores[i] >= min_score]

    def get(self, product_id: str) -> Product | None:
        self._refresh()
        position = self._positions.get(product_id)
        return None if position is None else self._products[position]

    def count(self) -> int:
        self._refresh()
        return len(self._products)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
