"""The embedded vector index and catalog ingestion."""
from __future__ import annotations

import numpy as np
import pytest

from schemas import Product
from streams.catalog import ingest, read_catalog_dir
from streams.index import LocalIndex


def unit(*values) -> np.ndarray:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def test_upsert_query_update_delete_and_persist(tmp_path):
    index = LocalIndex(tmp_path)
    index.upsert([Product(product_id="sofa", caption="grey sofa", category="sofa"),
                  Product(product_id="lamp", caption="brass lamp", category="lamp")],
                 np.stack([unit(1, 0, 0), unit(0, 1, 0)]))
    hits = index.query(unit(1, 0.1, 0), k=2)
    assert [h.product.product_id for h in hits] == ["sofa", "lamp"]
    assert hits[0].score == pytest.approx(float(unit(1, 0.1, 0) @ unit(1, 0, 0)))
    assert [h.product.product_id for h in index.query(unit(1, 0, 0), 2, category="lamp")] == \
        ["lamp"]
    assert index.query(unit(1, 0, 0), 2, min_score=0.5)[-1].product.product_id == "sofa"
    assert len(index.query(unit(1, 0, 0), 2, min_score=0.5)) == 1

    # Re-ingesting updates in place; another process's instance sees the change.
    index.upsert([Product(product_id="sofa", caption="green velvet sofa")], unit(0, 0, 1)[None])
    reader = LocalIndex(tmp_path)
    assert reader.count() == 2
    assert reader.get("sofa").caption == "green velvet sofa"
    assert reader.query(unit(0, 0, 1), 1)[0].product.product_id == "sofa"
    index.delete(["lamp"])
    assert reader.count() == 1 and reader.get("lamp") is None


def test_a_vector_of_another_size_is_refused(tmp_path):
    index = LocalIndex(tmp_path)
    index.upsert([Product(product_id="a", caption="a")], unit(1, 0)[None])
    with pytest.raises(ValueError, match="embedding model changed"):
        index.upsert([Product(product_id="b", caption="b")], unit(1, 0, 0)[None])


def test_catalog_ingest_reads_the_csv_and_reports_bad_products(tmp_path, tiny_models,
                                                               room_photos):
    from agents.embed import ImageEmbedder

    catalog = tmp_path / "catalog"
    (catalog / "chairs").mkdir(parents=True)
    (catalog / "chairs" / "oak.jpg").write_bytes(room_photos[27].read_bytes())
    (catalog / "sofa.jpg").write_bytes(room_photos[38].read_bytes())
    (catalog / "broken.png").write_bytes(b"not really a png")
    (catalog / "catalog.csv").write_text(
        "image,id,category,caption\nsofa.jpg,sofa-1,sofa,\"Sofa, light grey\"\n")
    items = read_catalog_dir(catalog)
    by_id = {i.product.product_id: i.product for i in items}
    assert by_id["sofa-1"].caption == "Sofa, light grey" and by_id["sofa-1"].category == "sofa"
    assert by_id["oak"].category == "chairs"  # from its folder when the CSV is silent

    embedder = ImageEmbedder.from_pretrained(str(tiny_models / "embedder"))
    index = LocalIndex(tmp_path / "index")
    ticks = []
    report = ingest(items, embedder, index, max_pixels=10**8, on_progress=ticks.append)
    assert sorted(report.indexed) == ["oak", "sofa-1"]
    assert "broken" in report.failed and "not an image" in report.failed["broken"]
    assert sum(ticks) == 3 and index.count() == 2
    ingest(items, embedder, index, max_pixels=10**8)  # again: updated, not duplicated
    assert index.count() == 2
