"""The embedded index on disk: with a graph, a write appends what changed instead of saving the
whole index (local_files.py); every reader catches up; a writer that died mid-write loses
nothing that was committed; an index saved by an earlier release still opens."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

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


def current(directory, kind: str):
    """The file of kind ("products", "changes", "graph", "vectors") VERSION names now."""
    version = json.loads((directory / "VERSION").read_text())
    if kind == "vectors":
        return directory / f"vectors.{version['vectors']}.f32"
    suffix = {"products": "json", "changes": "jsonl", "graph": "faiss"}[kind]
    return directory / f"{kind}.{version['epoch']}.{suffix}"


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
    saved = {kind: current(tmp_path, kind) for kind in ("products", "graph")}
    stamps = {kind: stamp(path) for kind, path in saved.items()}
    vectors_size = stamp(current(tmp_path, "vectors"))[1]

    added, added_vectors = catalog(200, 3, "lamp")
    writer.upsert_now(added, added_vectors)
    changed = Product(product_id="p7", caption="re-photographed", category="chair")
    writer.upsert_now([changed], -vectors[7][None])
    writer.delete_now(["p8"])

    # Nothing was saved whole: the records and the graph are the checkpoint's, untouched.
    assert {kind: current(tmp_path, kind) for kind in saved} == saved
    assert {kind: stamp(path) for kind, path in saved.items()} == stamps
    assert stamp(current(tmp_path, "vectors"))[1] == vectors_size + 4 * DIMS * 4
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
    records = current(tmp_path, "products")
    for start in range(100, 108, 2):  # 8 changes: still appended
        writer.upsert_now(*catalog(start, 2))
    assert current(tmp_path, "products") == records
    nearest(reader, vectors[0])  # the reader is now part-way through the epoch

    writer.upsert_now(*catalog(108, 2))  # 10 changes: a checkpoint
    assert current(tmp_path, "products") != records and not records.exists()
    assert current(tmp_path, "changes").stat().st_size == 0
    assert len(json.loads(current(tmp_path, "products").read_text())) == 110
    last = catalog(108, 2)[1][1]
    for view in (reader, graph_index(tmp_path)):
        assert view.count_now() == 110 and nearest(view, last) == "p109"


def test_a_writer_that_died_mid_write_leaves_what_was_committed(tmp_path):
    writer = graph_index(tmp_path)
    products, vectors = catalog(0, 100)
    writer.upsert_now(products, vectors)
    writer.upsert_now(*catalog(100, 1))
    # Killed after writing part of its next append, before committing it (VERSION).
    with open(current(tmp_path, "vectors"), "ab") as torn:
        torn.write(b"\x01" * 37)
    with open(current(tmp_path, "changes"), "ab") as torn:
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
    assert len(json.loads(current(tmp_path, "products").read_text())) == 80  # compacted
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
    assert not (tmp_path / "vectors.npy").exists() and not (tmp_path / "graph.faiss").exists()
    assert json.loads((tmp_path / "VERSION").read_text())["rows"] == 101
    reopened = graph_index(tmp_path)
    assert reopened.count_now() == 101
    assert nearest(reopened, added_vectors[0]) == "p100" and nearest(reopened, vectors[5]) == "p5"


def test_a_checkpoint_cut_short_leaves_the_last_committed_index_whole(tmp_path, monkeypatch):
    """A writer killed during a checkpoint, or one whose disk filled up: the new epoch's
    files are written beside the committed ones and never named by VERSION; the next
    checkpoint removes them."""
    from streams.adapters.index.local_files import IndexFiles

    writer = graph_index(tmp_path, checkpoint_rows=4)
    products, vectors = catalog(0, 100)
    writer.upsert_now(products, vectors)
    writer.upsert_now(*catalog(100, 2))
    committed = {kind: current(tmp_path, kind) for kind in ("products", "graph", "vectors")}

    # Its next write is due a checkpoint; it dies after writing the new records and graph,
    # before committing them (the last file it writes: the new epoch's empty log).
    writes = IndexFiles._replace

    def dies_before_the_commit(files, name, data):
        if name.startswith("changes."):
            raise OSError("killed")
        writes(files, name, data)
    monkeypatch.setattr(IndexFiles, "_replace", dies_before_the_commit)
    added, added_vectors = catalog(102, 2)
    writer.upsert_now(added, added_vectors)  # appended and committed; its checkpoint is not
    monkeypatch.undo()

    reader = graph_index(tmp_path)  # opens what was committed, whole
    assert {kind: current(tmp_path, kind) for kind in committed} == committed
    assert reader.count_now() == 104 and nearest(reader, added_vectors[1]) == "p103"
    writer.upsert_now(*catalog(104, 2))  # the next write checkpoints
    assert current(tmp_path, "products") != committed["products"]
    for view in (reader, graph_index(tmp_path)):
        assert view.count_now() == 106 and nearest(view, catalog(104, 2)[1][1]) == "p105"
        assert nearest(view, vectors[9]) == "p9"
    names = {path.name for path in tmp_path.iterdir() if not path.name.startswith(".")}
    assert names == {"VERSION", *(current(tmp_path, kind).name for kind in
                                  ("products", "changes", "graph", "vectors"))}


def test_a_reader_that_missed_a_product_come_and_go_does_not_count_it(tmp_path):
    writer, reader = graph_index(tmp_path), graph_index(tmp_path)
    products, vectors = catalog(0, 100)
    writer.upsert_now(products, vectors)
    assert reader.count_now() == 100
    added, added_vectors = catalog(100, 1)
    writer.upsert_now(added, added_vectors)
    writer.upsert_now(added, -added_vectors)  # replaced...
    writer.delete_now(["p100", "p3"])  # ...then deleted, all before the reader looks again
    assert reader.count_now() == 99 and reader.get_now("p100") is None
    assert "p100" not in {h.product.product_id for h in reader.query_now(-added_vectors[0], 5)}


def test_a_write_that_fails_is_absent_and_the_next_one_lands_right(tmp_path, monkeypatch):
    """A full disk mid-append: the write raises (the ingest fails those products, and can
    send them again), and the writer's memory does not run ahead of its files."""
    from streams.adapters.index.local_files import IndexFiles

    writer = graph_index(tmp_path)
    products, vectors = catalog(0, 100)
    writer.upsert_now(products, vectors)

    def disk_full(*_args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(IndexFiles, "append", disk_full)
    lost, lost_vectors = catalog(100, 3)
    with pytest.raises(OSError, match="No space left"):
        writer.upsert_now(lost, lost_vectors)
    monkeypatch.undo()

    added, added_vectors = catalog(200, 2)
    writer.upsert_now(added, added_vectors)
    for view in (writer, graph_index(tmp_path)):
        assert view.count_now() == 102 and view.get_now("p100") is None
        assert nearest(view, added_vectors[1]) == "p201"
        assert nearest(view, vectors[99]) == "p99"


def test_queries_go_on_while_the_writing_process_checkpoints(tmp_path, monkeypatch):
    """A checkpoint takes ~11 s at 1M products; the process that writes (the CPU worker
    during an ingest) answers its queries meanwhile: a checkpoint only reads."""
    import threading

    from streams.adapters.index.local_files import IndexFiles

    index = graph_index(tmp_path, checkpoint_rows=2)
    products, vectors = catalog(0, 100)
    index.upsert_now(products, vectors)
    saving, go_on = threading.Event(), threading.Event()
    saves = IndexFiles.save

    def slow_save(files, *args):
        saving.set()
        go_on.wait(30)
        return saves(files, *args)
    monkeypatch.setattr(IndexFiles, "save", slow_save)
    added, added_vectors = catalog(100, 2)
    writer = threading.Thread(target=index.upsert_now, args=(added, added_vectors))
    writer.start()
    try:
        assert saving.wait(30)  # the write is appended; its checkpoint is under way
        answered = threading.Event()
        threading.Thread(target=lambda: (index.query_now(added_vectors[0], 1),
                                         answered.set()), daemon=True).start()
        assert answered.wait(10), "a query waited for the checkpoint"
        assert nearest(index, added_vectors[1]) == "p101" and index.count_now() == 102
    finally:
        go_on.set()
        writer.join(30)
    assert current(tmp_path, "changes").stat().st_size == 0  # the checkpoint went through
    assert nearest(graph_index(tmp_path), added_vectors[0]) == "p100"
