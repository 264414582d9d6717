"""The vector-index contract, run on every backend: the embedded index searching exactly, the
embedded index walking its HNSW graph, and a real OpenSearch node with the k-NN plugin.

Scores are cosine similarities on every backend, so one set of assertions covers them all.
"""
from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest

from schemas import Product


def unit(*values) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


class IndexFactory:
    """Each call opens the same index again (a second process's view of it); `run` runs a test
    scenario on one event loop and closes what it opened there (async clients are loop-bound)."""

    def __init__(self, make):
        self.make = make
        self.opened = []

    def __call__(self):
        index = self.make()
        self.opened.append(index)
        return index

    def run(self, scenario):
        async def scenario_then_close():
            try:
                await scenario
            finally:
                for index in self.opened:
                    await index.close()
                self.opened.clear()
        asyncio.run(scenario_then_close())


@pytest.fixture(params=["embedded-exact", "embedded-hnsw", "opensearch"])
def make_index(request, tmp_path):
    cleanup = None  # drops the OpenSearch index the test made

    if request.param.startswith("embedded"):
        from streams.adapters.index.local import LocalIndex

        # The graph variant walks the graph for every query, filtered ones included.
        graph = request.param == "embedded-hnsw"

        def make():
            return LocalIndex(tmp_path / "index", ann_threshold=1 if graph else 10**9,
                              exact_filter_rows=0 if graph else 10**9)
    else:
        from streams.adapters.index.opensearch import OpenSearchIndex
        from streams.core.settings import Settings

        url = request.getfixturevalue("opensearch_url")
        name = f"contract-{uuid.uuid4().hex[:8]}"

        def make():
            return OpenSearchIndex.from_settings(Settings(opensearch_url=url,
                                                          opensearch_index=name))

        async def drop():
            index = make()
            await index.drop()
            await index.close()
        cleanup = drop
    yield IndexFactory(make)
    if cleanup:
        asyncio.run(cleanup())


SOFA = Product(product_id="sofa", caption="grey sofa", category="sofa", image="s3://b/sofa.jpg")
LAMP = Product(product_id="lamp", caption="brass lamp", category="lamp")


def test_nearest_first_with_cosine_scores_filters_and_a_floor(make_index):
    async def scenario():
        index = make_index()
        assert await index.upsert([SOFA, LAMP], np.stack([unit(1, 0, 0), unit(0, 1, 0)])) == {}
        query = unit(1, 0.1, 0)
        hits = await index.query(query, k=2)
        assert [h.product.product_id for h in hits] == ["sofa", "lamp"]
        assert hits[0].score == pytest.approx(float(query @ unit(1, 0, 0)), abs=1e-4)
        assert hits[1].score == pytest.approx(float(query @ unit(0, 1, 0)), abs=1e-4)
        assert hits[0].product == SOFA
        lamps = await index.query(unit(1, 0, 0), 2, category="lamp")
        assert [h.product.product_id for h in lamps] == ["lamp"]
        assert await index.query(unit(1, 0, 0), 2, category="rug") == []
        floored = await index.query(unit(1, 0, 0), 2, min_score=0.5)
        assert [h.product.product_id for h in floored] == ["sofa"]
    make_index.run(scenario())


def test_reingesting_updates_in_place_and_deletes_are_seen_by_other_readers(make_index):
    async def scenario():
        index, reader = make_index(), make_index()
        await index.upsert([SOFA, LAMP], np.stack([unit(1, 0, 0), unit(0, 1, 0)]))
        velvet = Product(product_id="sofa", caption="green velvet sofa", category="sofa")
        await index.upsert([velvet], unit(0, 0, 1)[None])
        assert await reader.count() == 2
        assert (await reader.get("sofa")).caption == "green velvet sofa"
        assert [h.product.product_id for h in await reader.query(unit(0, 0, 1), 1)] == ["sofa"]
        await index.delete(["lamp", "never-existed"])
        assert await reader.count() == 1
        assert await reader.get("lamp") is None
        assert [h.product.product_id for h in await reader.query(unit(0, 1, 0), 5)] == ["sofa"]
    make_index.run(scenario())


def test_a_vector_of_another_size_is_refused(make_index):
    async def scenario():
        index = make_index()
        await index.upsert([SOFA], unit(1, 0)[None])
        with pytest.raises(ValueError, match="embedding model changed"):
            await index.upsert([LAMP], unit(1, 0, 0)[None])
    make_index.run(scenario())


def test_an_empty_index_answers_nothing(make_index):
    async def scenario():
        index = make_index()
        assert await index.query(unit(1, 0), 3) == []
        assert await index.get("sofa") is None
        assert await index.count() == 0
    make_index.run(scenario())


def clustered_catalog(rng, count: int, dims: int, families: int, spread: float,
                      category) -> tuple[list[Product], np.ndarray]:
    """Products around `families` centres, like embeddings of product families (unit
    vectors); category(i): the i-th product's category."""
    centers = rng.normal(size=(families, dims))
    vectors = centers[rng.integers(0, families, count)] + spread * rng.normal(size=(count, dims))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    products = [Product(product_id=f"p{i}", caption=f"product {i}", category=category(i))
                for i in range(count)]
    return products, vectors


def test_many_products_recall_and_category_filter(make_index):
    """2,000 clustered 64-d products: the top 10 match exact search (recall@10 >= 0.95) and a
    filtered query returns only, and enough of, the requested category."""
    rng = np.random.default_rng(7)
    products, vectors = clustered_catalog(rng, 2000, 64, 40, 0.5,
                                          lambda i: "chair" if i % 7 == 0 else "table")
    queries = vectors[rng.integers(0, 2000, 20)] + 0.1 * rng.normal(size=(20, 64))

    async def scenario():
        index = make_index()
        for start in range(0, 2000, 500):
            await index.upsert(products[start:start + 500], vectors[start:start + 500])
        recalls = []
        for query in queries:
            query = query / np.linalg.norm(query)
            truth = {f"p{i}" for i in np.argsort(-(vectors @ query))[:10]}
            found = {h.product.product_id for h in await index.query(query, 10)}
            recalls.append(len(truth & found) / 10)
            chairs = await index.query(query, 10, category="chair")
            assert len(chairs) == 10 and {h.product.category for h in chairs} == {"chair"}
        assert np.mean(recalls) >= 0.95
    make_index.run(scenario())


def test_a_category_is_found_as_well_as_the_whole_catalog(tmp_path):
    """Embedded graph, 20,000 products, a category of about 1 product in 5 and one of 1 in
    13. A walk through a graph made mostly of refused rows loses its way, so a category rarer
    than RESTYLE_INDEX_FILTER_WALK_MIN_SHARE (a tenth) is scored outright over its rows
    (exact; here a walk would cost less), and a commoner one walks the graph with its ef
    widened: as well as an unfiltered query walks."""
    from streams.adapters.index.local import LocalIndex

    def category(i: int) -> str:
        return "rare" if i % 13 == 0 else "common" if i % 5 == 1 else "other"

    rng = np.random.default_rng(3)
    products, vectors = clustered_catalog(rng, 20_000, 32, 200, 0.6, category)
    queries = vectors[rng.integers(0, 20_000, 50)] + 0.3 * rng.normal(size=(50, 32))
    index = LocalIndex(tmp_path, ann_threshold=1)
    index.upsert_now(products, vectors)

    def recall(wanted: str | None) -> float:
        rows = np.flatnonzero([wanted in (None, category(i)) for i in range(20_000)])
        recalls = []
        for query in queries:
            query = query / np.linalg.norm(query)
            truth = {f"p{i}" for i in rows[np.argsort(-(vectors[rows] @ query))[:10]]}
            found = index.query_now(query, 10, category=wanted)
            assert wanted is None or {h.product.category for h in found} == {wanted}
            recalls.append(len(truth & {h.product.product_id for h in found}) / 10)
        return float(np.mean(recalls))

    rare = sum(category(i) == "rare" for i in range(20_000))  # 1,539
    assert index._filtered_ef(10, rare) * 6 < rare  # a walk would cost less than scoring them
    assert recall("rare") == 1.0
    assert recall("common") >= recall(None) - 0.02
