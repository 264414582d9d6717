"""The vector index of catalog products: embedded (on disk) unless an OpenSearch URL is set."""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from streams.core.settings.storage import StorageSettings


class IndexSettings(StorageSettings):
    index_dir: Path | None = None
    # The embedded index searches exactly below this many products, with an HNSW graph above.
    index_ann_threshold: int = 5_000
    index_ef_search: int = 64
    # A category filter letting through less than this share of the products is searched
    # exactly over its rows; a commoner one walks the graph (its recall falls apart below).
    index_filter_walk_min_share: float = Field(0.1, ge=0, le=1)
    # With a graph, a write appends what changed; the index is saved whole again after this
    # many changes (what a process opening it then adds to the saved graph, at most).
    index_checkpoint_rows: int = 10_000
    opensearch_url: str | None = None
    opensearch_user: str | None = None
    opensearch_password: SecretStr | None = None
    # TLS: the CA that signed the cluster's certificate (else the system's), and a client
    # certificate and key where the cluster asks for one. Certificates are always verified
    # unless verify_certs is false (a development cluster with demo certificates).
    opensearch_ca_certs: str | None = None
    opensearch_client_cert: str | None = None
    opensearch_client_key: str | None = None
    opensearch_verify_certs: bool = True
    opensearch_index: str = "restyle-products"
    opensearch_engine: Literal["lucene", "faiss", "nmslib"] = "lucene"
    opensearch_space: Literal["cosinesimil", "innerproduct", "l2"] = "cosinesimil"
    opensearch_ef_construction: int = 128
    opensearch_m: int = 16
    opensearch_shards: int = 1
    opensearch_replicas: int = 0
    # "wait_for": a write returns once searchable (what an ingest outcome promises); "false"
    # for the fastest bulk loads, when searchability a refresh interval later is fine.
    opensearch_refresh: Literal["wait_for", "true", "false"] = "wait_for"

    @cached_property
    def index_path(self) -> Path:
        return self.index_dir or self.state_dir / "index"
