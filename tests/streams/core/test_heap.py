"""A worker's loaded models are kept out of garbage collection, and the collector's pauses
are on /metrics (streams/core/heap.py)."""
from __future__ import annotations

import gc
import re
import weakref

import pytest

from streams.core import heap
from streams.core.metrics import GC_PAUSES, render_metrics


@pytest.fixture
def unfrozen():
    yield
    gc.unfreeze()  # the test process's heap is its own again


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cycle collector frees it


def tracked_ids() -> set[int]:
    return {id(obj) for obj in gc.get_objects()}


def test_what_is_loaded_when_the_heap_settles_is_no_longer_walked_by_collections(unfrozen):
    loaded = Node()
    garbage = Node()
    left_over = weakref.ref(garbage)
    del garbage
    assert id(loaded) in tracked_ids()

    heap.settle("a model")

    assert left_over() is None  # start-up garbage is freed, not kept for ever
    assert id(loaded) not in tracked_ids()  # frozen: no collection walks it
    assert gc.get_freeze_count() > 0
    after = Node()
    assert id(after) in tracked_ids()  # what comes later is collected as usual


def test_a_cpu_worker_settles_its_models_once_they_are_loaded(unfrozen, tiny_models,
                                                              tmp_path, caplog):
    """The models every CPU worker needs, and those RESTYLE_CPU_WARM_MODELS names (the
    others load on first use)."""
    from streams.core.settings import Settings
    from streams.worker import build_worker

    settings = Settings(state_dir=tmp_path, kafka_bootstrap="127.0.0.1:1",
                        models_dir=tiny_models, storage_base=(tmp_path / "store").as_uri(),
                        cpu_warm_models=["semantic", "face_detector"])
    gc.unfreeze()
    with caplog.at_level("INFO", logger="restyle.heap"):
        build_worker(settings, "cpu", 6098)  # built, not started: nothing is reached
    [settled] = [r.getMessage() for r in caplog.records if "kept out of garbage" in
                 r.getMessage()]  # once for them all
    loaded = set(re.match(r"the (.*) models loaded", settled).group(1).split(", "))
    assert loaded >= {"detector", "embedder", "depth", "semantic", "face_detector"}
    assert "captioner" not in loaded  # not named: loaded on first use

    import torch

    assert gc.get_freeze_count() > 100_000  # the libraries and the models
    walked = [obj for obj in gc.get_objects() if isinstance(obj, torch.nn.Module)]
    assert not walked, walked[:3]  # no layer of a loaded model is walked by a collection


def test_a_cpu_worker_that_stores_in_s3_makes_its_client_at_start_and_settles_it(
        unfrozen, tiny_models, tmp_path, caplog):
    """botocore's model of the S3 service (tens of thousands of objects, kept for the life
    of the process) is not walked by the collections that come after."""
    import asyncio

    from streams.core.settings import Settings
    from streams.worker import build_worker, settled_storage

    settings = Settings(state_dir=tmp_path, kafka_bootstrap="127.0.0.1:1",
                        models_dir=tiny_models, s3_endpoint="http://127.0.0.1:1",
                        storage_base="s3://restyle")
    rt = build_worker(settings, "cpu", 6099)  # built, not started
    before = len(gc.get_objects())

    async def start() -> None:
        await settled_storage(rt)()  # the task the worker runs as it starts
        try:
            client = await rt.storage.s3.client()  # no request: nothing is reached
            model = client.meta.service_model._service_description
            assert len(model["shapes"]) > 100
            assert id(model) not in tracked_ids()
        finally:
            await rt.storage.close()

    with caplog.at_level("INFO", logger="restyle.heap"):
        asyncio.run(start())
    assert any(r.getMessage().startswith("the S3 client loaded") for r in caplog.records)
    assert len(gc.get_objects()) < before  # what the worker built is settled with it


def test_the_collectors_pauses_are_on_the_metrics_page():
    def figures() -> dict[str, float]:
        page = render_metrics().decode()
        return {name: float(value) for name, value in re.findall(
            r'^restyle_gc_pause_seconds_(count|sum)\{generation="2"\} (\S+)$', page, re.M)}

    GC_PAUSES.install()
    try:
        before = figures()
        gc.collect()
        after = figures()
    finally:
        GC_PAUSES.uninstall()
    assert after["count"] == before["count"] + 1
    assert after["sum"] > before["sum"]
