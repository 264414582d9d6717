"""The OpenSearch k-NN backend of the vector index (opensearch-py, async client).

One document per product, `_id` = product_id, so a re-ingest overwrites it. The vector field is
a `knn_vector` with an HNSW method; engine, space and graph parameters come from settings. The
index is created on the first write, when the embedding size is known.

OpenSearch scores are not cosines (cosinesimil scores (1 + cos) / 2, for one); they are
converted back, so `ProductHit.score` and the score floor mean the same on every backend.
"""
from __future__ import annotations

import logging

import numpy as np

from schemas import ErrorCode, Product, ProductHit, StageFailure
from streams.adapters.index.base import normalise
from streams.adapters.retries import retried

log = logging.getLogger("restyle.opensearch")
VECTOR_FIELD = "vector"


def cosine_from_score(score: float, space: str) -> float:
    """OpenSearch's k-NN score back to the cosine of two unit vectors."""
    if space == "cosinesimil":
        return 2.0 * score - 1.0
    if space == "innerproduct":  # score = 1 + ip for ip >= 0, 1 / (1 - ip) below
        return score - 1.0 if score >= 1.0 else 1.0 - 1.0 / score
    if space == "l2":  # score = 1 / (1 + d^2), and d^2 = 2 - 2 cos for unit vectors
        return 1.0 - (1.0 / score - 1.0) / 2.0
    raise ValueError(f"unsupported space {space!r}")


def score_from_cosine(cosine: float, space: str) -> float:
    if space == "cosinesimil":
        return (1.0 + cosine) / 2.0
    if space == "innerproduct":
        return 1.0 + cosine if cosine >= 0 else 1.0 / (1.0 - cosine)
    if space == "l2":
        return 1.0 / (1.0 + (2.0 - 2.0 * cosine))
    raise ValueError(f"unsupported space {space!r}")


def index_body(dimension: int, engine: str, space: str, m: int, ef_construction: int,
               shards: int, replicas: int) -> dict:
    return {
        "settings": {"index": {"knn": True, "number_of_shards": shards,
                               "number_of_replicas": replicas}},
        "mappings": {"properties": {
            VECTOR_FIELD: {"type": "knn_vector", "dimension": dimension, "method": {
                "name": "hnsw", "engine": engine, "space_type": space,
                "parameters": {"m": m, "ef_construction": ef_construction}}},
            "product_id": {"type": "keyword"},
            "caption": {"type": "text"},
            "category": {"type": "keyword"},
            "image": {"type": "keyword", "index": False},
        }},
    }


def knn_query(vector: list[float], k: int, category: str | None, min_score: float,
              space: str) -> dict:
    knn: dict = {"vector": vector, "k": k}
    if category is not None:
        # Efficient filtering: the filter is applied inside the graph search, so k hits come
        # back even when the category is a small part of the catalog.
        knn["filter"] = {"term": {"category": category}}
    body = {"size": k, "query": {"knn": {VECTOR_FIELD: knn}}, "_source": {"excludes": [VECTOR_FIELD]}}
    if min_score > -1.0:
        body["min_score"] = score_from_cosine(min_score, space)
    return body


def transient(exc: BaseException) -> bool:
    """Worth retrying: OpenSearch did not answer (refused, timed out) or answered 429 (its
    queues are full), 5xx, or a bulk write some of whose documents it rejected for a 429. A
    TLS failure is not."""
    from opensearchpy.exceptions import ConnectionError as Unreachable, TransportError

    if tls_failure(exc):  # an untrusted certificate: the same on every attempt
        return False
    if isinstance(exc, (Unreachable, Throttled)):
        return True
    status = getattr(exc, "status_code", None) if isinstance(exc, TransportError) else None
    return isinstance(status, int) and (status == 429 or status >= 500)


def tls_failure(exc: BaseException) -> bool:
    """opensearch-py says a TLS failure as a ConnectionError: an SSLError (its synchronous
    transport) or one that carries aiohttp's (the asynchronous one restyle uses) as its info."""
    import ssl

    import aiohttp
    from opensearchpy.exceptions import SSLError, TransportError

    info = exc.args[2] if isinstance(exc, TransportError) and len(exc.args) > 2 else None
    return isinstance(exc, SSLError) or isinstance(info, (ssl.SSLError, aiohttp.ClientSSLError))


class Throttled(Exception):
    """A bulk write OpenSearch rejected documents of with 429: write them again later."""


class OpenSearchIndex:
    def __init__(self, client, name: str, engine: str = "lucene", space: str = "cosinesimil",
                 m: int = 16, ef_construction: int = 128, shards: int = 1, replicas: int = 0,
                 refresh: str = "wait_for"):
        self.client = client
        self.name = name
        self.engine, self.space = engine, space
        self.m, self.ef_construction = m, ef_construction
        self.shards, self.replicas = shards, replicas
        self.refresh = refresh
        self._exists = False
        self._dimension: int | None = None  # checked against the mapping once

    @classmethod
    def from_settings(cls, settings) -> "OpenSearchIndex":
        from opensearchpy import AsyncOpenSearch

        auth = None
        if settings.opensearch_user:
            password = settings.opensearch_password
            auth = (settings.opensearch_user, password.get_secret_value() if password else "")
        client = AsyncOpenSearch(hosts=[settings.opensearch_url], http_auth=auth,
                                 verify_certs=settings.opensearch_verify_certs,
                                 ca_certs=settings.opensearch_ca_certs,
                                 client_cert=settings.opensearch_client_cert,
                                 client_key=settings.opensearch_client_key,
                                 # One attempt per call: restyle retries (transient() below),
                                 # within the stage's budget, and counts the attempts.
                                 timeout=30, max_retries=0)
        return cls(client, settings.opensearch_index, settings.opensearch_engine,
                   settings.opensearch_space, settings.opensearch_m,
                   settings.opensearch_ef_construction, settings.opensearch_shards,
                   settings.opensearch_replicas, settings.opensearch_refresh)

    async def ensure_index(self, dimension: int) -> None:
        if self._dimension == dimension:
            return
        if not await self.client.indices.exists(index=self.name):
            body = index_body(dimension, self.engine, self.space, self.m, self.ef_construction,
                              self.shards, self.replicas)
            # Two workers may race to create it: "already exists" is success.
            await self.client.indices.create(index=self.name, body=body, ignore=400)
        mapping = await self.client.indices.get_mapping(index=self.name)
        held = int(mapping[self.name]["mappings"]["properties"][VECTOR_FIELD]["dimension"])
        if held != dimension:
            raise ValueError(f"index {self.name} holds {held}-d vectors; got "
                             f"{dimension}-d (was the embedding model changed?)")
        self._exists, self._dimension = True, dimension

    async def _retried(self, what: str, call):
        """call() retried while OpenSearch is unavailable; a refusal no retry would change (an
        untrusted certificate, credentials refused) fails at once, saying which setting."""
        from opensearchpy.exceptions import TransportError

        what = f"{what} the OpenSearch index {self.name}"
        try:
            return await retried(call, transient, what, ErrorCode.INDEX_UNAVAILABLE)
        except TransportError as exc:
            status = getattr(exc, "status_code", None)
            if tls_failure(exc):
                cause = "the cluster's certificate is not trusted (RESTYLE_OPENSEARCH_CA_CERTS " \
                        "names the CA that signed it)"
            elif status == 401:
                cause = "the cluster refused restyle's credentials (RESTYLE_OPENSEARCH_USER, " \
                        "RESTYLE_OPENSEARCH_PASSWORD)"
            else:
                raise
            raise StageFailure(ErrorCode.INDEX_UNAVAILABLE, f"{what} failed: {cause}: {exc}") \
                from exc

    async def upsert(self, products: list[Product], vectors) -> dict[str, str]:
        """Index products by id; returns {product_id: cause} for those OpenSearch refused.
        Writing again is harmless (documents are keyed by product id): a bulk write is
        retried whole while OpenSearch is unavailable or throttles it."""
        return await self._retried("writing to", lambda: self._upsert(products, vectors))

    async def _upsert(self, products: list[Product], vectors) -> dict[str, str]:
        from opensearchpy.helpers import async_bulk

        if len(products) != len(vectors):
            raise ValueError("one vector per product")
        if not products:
            return {}
        vectors = normalise(np.asarray(vectors, dtype=np.float32))
        await self.ensure_index(vectors.shape[1])
        actions = [{"_op_type": "index", "_index": self.name, "_id": p.product_id,
                    "_source": {**p.model_dump(), VECTOR_FIELD: v.tolist()}}
                   for p, v in zip(products, vectors)]
        # With refresh=wait_for (the default), the products are searchable when this returns:
        # what an `indexed` ingest outcome promises.
        _, errors = await async_bulk(self.client, actions, raise_on_error=False,
                                     refresh=self.refresh)
        details = [next(iter(error.values())) for error in errors]
        if any(detail.get("status") == 429 for detail in details):
            raise Throttled(f"OpenSearch rejected {len(details)} of {len(actions)} documents "
                            f"with 429 (its write queue is full)")
        return {str(detail.get("_id")): f"OpenSearch refused it: {detail.get('error')}"
                for detail in details}

    async def delete(self, product_ids: list[str]) -> None:
        await self._retried("deleting from", lambda: self._delete(product_ids))

    async def _delete(self, product_ids: list[str]) -> None:
        from opensearchpy.helpers import async_bulk

        if not product_ids or not await self.client.indices.exists(index=self.name):
            return
        actions = [{"_op_type": "delete", "_index": self.name, "_id": pid} for pid in product_ids]
        _, errors = await async_bulk(self.client, actions, raise_on_error=False,
                                     refresh=self.refresh)
        real = [e for e in errors if next(iter(e.values())).get("status") != 404]
        if real:
            raise RuntimeError(f"OpenSearch could not delete: {real[:3]}")

    async def query(self, vector, k: int, category: str | None = None,
                    min_score: float = -1.0) -> list[ProductHit]:
        return await self._retried("searching", lambda: self._query(vector, k, category,
                                                                    min_score))

    async def _query(self, vector, k: int, category: str | None,
                     min_score: float) -> list[ProductHit]:
        if k <= 0 or not await self._ready():
            return []
        query = normalise(vector).reshape(-1).tolist()
        response = await self.client.search(
            index=self.name, body=knn_query(query, k, category, min_score, self.space))
        hits = []
        for hit in response["hits"]["hits"]:
            cosine = cosine_from_score(hit["_score"], self.space)
            if cosine >= min_score:
                hits.append(ProductHit(product=Product(**hit["_source"]), score=cosine))
        return hits

    async def get(self, product_id: str) -> Product | None:
        return await self._retried("reading", lambda: self._get(product_id))

    async def _get(self, product_id: str) -> Product | None:
        if not await self._ready():
            return None
        response = await self.client.get(index=self.name, id=product_id, ignore=404,
                                         _source_excludes=[VECTOR_FIELD])
        return Product(**response["_source"]) if response.get("found") else None

    async def count(self) -> int:
        return await self._retried("counting", self._count)

    async def _count(self) -> int:
        if not await self._ready():
            return 0
        return int((await self.client.count(index=self.name))["count"])

    async def refresh_now(self) -> None:
        """Make everything written so far searchable (after bulk loads with refresh=false)."""
        if await self._ready():
            await self.client.indices.refresh(index=self.name)

    async def close(self) -> None:
        await self.client.close()

    async def drop(self) -> None:
        """Delete the whole index (tests, re-embedding with a new model)."""
        await self.client.indices.delete(index=self.name, ignore=404)
        self._exists, self._dimension = False, None

    async def _ready(self) -> bool:
        if not self._exists:
            self._exists = bool(await self.client.indices.exists(index=self.name))
        return self._exists
