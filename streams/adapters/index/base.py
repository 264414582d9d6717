"""The vector index of catalog products: the interface every backend implements.

Scores are cosine similarities in [-1, 1] on every backend (OpenSearch's own score scale is
converted), so a score floor means the same thing whichever index is configured.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from schemas import Product, ProductHit


class VectorIndex(Protocol):
    async def upsert(self, products: list[Product], vectors) -> dict[str, str]:
        """Insert or replace by product_id; returns {product_id: cause} for any refused."""
    async def delete(self, product_ids: list[str]) -> None: ...
    async def query(self, vector, k: int, category: str | None = None,
                    min_score: float = -1.0) -> list[ProductHit]: ...
    async def get(self, product_id: str) -> Product | None: ...
    async def count(self) -> int: ...
    async def close(self) -> None: ...


def normalise(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
