"""The embedded index on disk: with a graph, a write appends what changed instead of saving the
whole index (local_files.py); every reader catches up; a writer that died mid-write loses
nothing that was committed; an index saved by an earlier release still opens."""
from __future__ import annotations

import json
import os

import numpy as np

from schemas import Product
from streams.adapters.index.local import LocalIndex

DIMS = 16


def catalog(start: int, count: int, category: str = "chair") -> tuple[list[Product], np.ndarray]:
    rng = np.random.default_rng(start)
    products = [Product(product_id=f"p{i}", caption=f"product {i}", category=category)
                for i in range(start, start + count)]
    return products, rng.normal(size=(count, DIMS)).astype(np.float32)


def graph_index(directory, **options) -> LocalIndex:
    return LocalIndex(directory, ann_threshold=50, exact_filter_rows=0, **options)


def stamp(path) -> tuple[int, int]:
    """Which file is there (a rewrite replaces it: a new inode) and how long it is."""
    status = os.stat(path)
    return status.st_ino, status.st_size


def nearest(index: LocalIndex, vector: np.ndarray) -> str:
    return index.query_now(vector, 1)[0].product.product_id


def test_a_small_write_into_a_graph_index_appends_and_every_reader_sees_it(tmp_path):
    writer, reader = graph_index(tmp_path), graph_index(tmp_path)
    products, vectors = catalog(0, 200)
    writer.upsert_now(products, vectors)
    assert nearest(reader, vectors[7]) == "p7"
    saved = {name: stamp(tmp_path / name) for name in ("products.json", "graph.faiss")}
    vectors_size = stamp(tmp_path / "vectors.f32")[1]

    added, added_vectors = catalog(200, 3, "lamp")
    writer.upsert_now(added, added_vectors)
    changed = Product(product_id="p7", caption="re-photographed", category="chair")
    writer.upsert_now([changed], -vectors[7][None])
    writer.delete_now(["p8"])

    # Nothing was saved whole: the records and the graph are the checkpoint's, untouched.
    assert {name: stamp(tmp_path / name) for name in saved} == saved
    assert stamp(tmp_path / "vectors.f32")[1] == vectors_size + 4 * DIMS * 4
    # The reader that was already open and a process opening the index now agree.
    for view in (reader, graph_index(tmp_path)):
        assert view.count_now() == 202
        assert nearest(view, added_vectors[1]) == "p201"
        lamps = view.query_now(added_vectors[1], 5, category="lamp")
        assert {h.product.product_id for h in lamps} == {"p200", "p201", "p202"}
        assert view.get_now("p7").caption == "re-photographed"
        assert nearest(view, -vectors[7]) == "p7"
        assert view.get_now("p8") is None
        assert "p8" not in {h.product.product_id for h in view.query_now(vectors[8], 5)}


def test_after_checkpoint_rows_changes_the_index_is_saved_whole_again(tmp_path):
    writer, reader = graph_index(tmp_path, checkpoint_rows=10), graph_index(tmp_path)
    products, vectors = catalog(0, 100)
    writer.upsert_now(products, vectors)
    records = stamp(tmp_path / "products.json")
    for start in range(100, 108, 2):  # 8 changes: still appended
        writer.upsert_now(*catalog(start, 2))
    assert stamp(tmp_path / "products.json") == records
    nearest(reader, vectors[0])  # the reader is now part-way through the epoch

    writer.upsert_now(*catalog(108, 2))  # 10 changes: a checkpoint
    assert stamp(tmp_path / "products.json") != records
    assert (tmp_path / "changes.jsonl").stat().st_size == 0
    assert len(json.loads((tmp_path / "products.json").read_text())) == 110
    last = catalog(108, 2)[1][1]
    for view in (reader, graph_index(tmp_path)):
        assert view.count_now() == 110 and nearest(view, last) == "p109"


def test_a_writer_that_died_mid_write_leaves_what_was_committed(tmp_path):
    writer = graph_index(tmp_path)
    products, vectors = catalog(0, 100)
    writer.upsert_now(products, vectors)
    writer.upsert_now(*catalog(100, 1))
    # Killed after writing part of its next append, before committing it (VERSION).
    with open(tmp_path / "vectors.f32", "ab") as torn:
        torn.write(b"\x01" * 37)
    with open(tmp_path / "changes.jsonl", "ab") as torn:
        torn.write(b'[101,{"product_id":"half-writ')

    reader = graph_index(tmp_path)
    assert reader.count_now() == 101 and reader.get_now("half-writ") is None
    restarted = graph_index(tmp_path)
    added, added_vectors = catalog(101, 2)
    restarted.upsert_now(added, added_vectors)  # writes over the torn tail
    for view in (reader, graph_index(tmp_path)):
        assert view.count_now() == 103
        assert nearest(view, added_vectors[0]) == "p101"
        assert nearest(view, vectors[42]) == "p42"


def test_many_deletes_rebuild_the_graph_and_readers_follow(tmp_path):
    writer, reader = graph_index(tmp_path), graph_index(tmp_path)
    products, vectors = catalog(0, 120)
    writer.upsert_now(products, vectors)
    assert reader.count_now() == 120
    writer.delete_now([f"p{i}" for i in range(0, 120, 3)])  # a third: past a quarter
    assert len(json.loads((tmp_path / "products.json").read_text())) == 80  # compacted
    for view in (reader, graph_index(tmp_path)):
        assert view.count_now() == 80 and view.get_now("p3") is None
        assert nearest(view, vectors[4]) == "p4"


def test_an_index_saved_by_an_earlier_release_opens_and_is_converted_on_write(tmp_path):
    """Format 1: one VERSION token, the vectors as vectors.npy, no changes log."""
    import faiss

    products, vectors = catalog(0, 100)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.save(tmp_path / "vectors.npy", vectors)
    (tmp_path / "products.json").write_text(json.dumps([p.model_dump() for p in products]))
    graph = faiss.IndexHNSWFlat(DIMS, 16, faiss.METRIC_INNER_PRODUCT)
    graph.add(vectors)
    faiss.write_index(graph, str(tmp_path / "graph.faiss"))
    (tmp_path / "VERSION").write_text("0f3e9a")

    index = graph_index(tmp_path)
    assert index.count_now() == 100 and nearest(index, vectors[5]) == "p5"
    added, added_vectors = catalog(100, 1)
    index.upsert_now(added, added_vectors)
    assert not (tmp_path / "vectors.npy").exists()
    assert json.loads((tmp_path / "VERSION").read_text())["rows"] == 101
    reopened = graph_index(tmp_path)
    assert reopened.count_now() == 101
    assert nearest(reopened, added_vectors[0]) == "p100" and nearest(reopened, vectors[5]) == "p5"
