"""The vector index of catalog products: the factory that picks a backend from the settings.

Backends: `local` (embedded, on disk; exact search, HNSW above a size) and `opensearch` (k-NN).
Both implement `base.VectorIndex`.
"""
from __future__ import annotations

from streams.adapters.index.base import VectorIndex
from streams.adapters.index.local import LocalIndex
from streams.adapters.index.opensearch import OpenSearchIndex


def open_index(settings) -> VectorIndex:
    """The index the settings name: OpenSearch when a URL is configured, else the embedded one."""
    if settings.opensearch_url:
        return OpenSearchIndex.from_settings(settings)
    return LocalIndex(settings.index_path, ann_threshold=settings.index_ann_threshold,
                      ef_search=settings.index_ef_search,
                      walk_min_share=settings.index_filter_walk_min_share,
                      checkpoint_rows=settings.index_checkpoint_rows)
