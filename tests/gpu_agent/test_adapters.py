"""Many people's adapters on one base pipeline: switching never leaks one adapter into another's
images, the base model is itself again after them, and adapters beyond the device's capacity
are evicted and reloaded (diffusers' adapter API, real LoRA files trained on the tiny model)."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
from PIL import ImageOps

from gpu_agent.adapters import AdapterFiles
from gpu_agent.engine import RenderEngine
from gpu_agent.trainer import TrainingRun, train
from schemas.avatars import ResolvedTrainParams
from schemas.params import RenderParams
from tests import faces

RENDER = RenderParams(steps=2, guidance=7.5, controlnet_scale=1.0, seed=5, width=64, height=64,
                      negative_prompt="", num_images=1)
PROMPT = "a photo of zqk person"


def trained_adapter(base: str, seed: int, directory) -> str:
    face = faces.astronaut().crop((100, 0, 356, 256)).resize((64, 64))
    params = ResolvedTrainParams(
        steps=4, learning_rate=1e-2, rank=4, alpha=4, resolution=64, batch_size=1,
        train_text_encoder=seed % 2 == 0, prior_preservation=False, class_images=1,
        prior_loss_weight=1.0, mixed_precision="no", gradient_checkpointing=False,
        checkpoint_every=100, seed=seed)
    train(TrainingRun(base, [face, ImageOps.mirror(face)], PROMPT, "a photo of person", params,
                      device="cpu")).save(str(directory))
    return str(directory / "pytorch_lora_weights.safetensors")


@pytest.fixture(scope="module")
def base(tiny_models) -> str:
    return str(tiny_models / "diffusion")


@pytest.fixture(scope="module")
def adapters(base, tmp_path_factory) -> dict[str, str]:
    return {name: trained_adapter(base, seed, tmp_path_factory.mktemp(name))
            for name, seed in (("A", 2), ("B", 3), ("C", 4))}


def render(engine: RenderEngine, base: str, adapter: str | None, adapters) -> np.ndarray:
    from pathlib import Path

    path = Path(adapters[adapter]) if adapter else None
    image = engine.avatar(base, adapter, path, PROMPT, RENDER)[0]
    return np.asarray(image, dtype=np.int16)


def test_switching_adapters_gives_each_its_own_image(base, adapters):
    references = {name: render(RenderEngine("cpu", "float32"), base, name, adapters)
                  for name in (None, "A", "B")}
    assert np.abs(references["A"] - references[None]).mean() > 1  # the adapters do something
    assert np.abs(references["A"] - references["B"]).mean() > 1

    engine = RenderEngine("cpu", "float32")
    for name in (None, "A", "B", None, "A"):
        assert np.array_equal(render(engine, base, name, adapters), references[name]), name
    resident = engine.adapters(base)
    assert resident.loads == 2 and resident.hits == 1  # A loaded once, used twice


def test_adapters_beyond_capacity_are_evicted_and_reload_the_same(base, adapters):
    engine = RenderEngine("cpu", "float32", resident_adapters=2)
    first_a = render(engine, base, "A", adapters)
    render(engine, base, "B", adapters)
    render(engine, base, "C", adapters)  # evicts A
    resident = engine.adapters(base)
    assert "A" not in resident and "B" in resident and "C" in resident
    assert np.array_equal(render(engine, base, "A", adapters), first_a)
    assert resident.loads == 4


def test_adapter_files_are_fetched_once_and_evicted_over_size(tmp_path):
    fetched = []

    async def fetch(uri: str) -> bytes:
        fetched.append(uri)
        return b"x" * 600

    async def scenario():
        files = AdapterFiles(tmp_path, max_bytes=1000)
        first = await files.local("s3://b/one", fetch)
        assert await files.local("s3://b/one", fetch) == first
        await files.local("s3://b/two", fetch)  # 1200 bytes: the older file goes
        return first, files

    first, files = asyncio.run(scenario())
    assert fetched == ["s3://b/one", "s3://b/two"]
    assert not first.exists() and files.path_for("s3://b/two").exists()



def test_hotswapped_adapters_replace_evicted_ones_in_place_without_leaking(base, tmp_path_factory):
    """UNet-only adapters (odd seeds train no text encoder) swap into evicted slots; each image
    still equals the one its adapter makes alone."""
    unet_only = {name: trained_adapter(base, seed, tmp_path_factory.mktemp(f"u{name}"))
                 for name, seed in (("P", 5), ("Q", 7), ("R", 9))}
    references = {name: render(RenderEngine("cpu", "float32"), base, name, unet_only)
                  for name in unet_only}
    engine = RenderEngine("cpu", "float32", resident_adapters=2, hotswap_rank=8)
    for name in ("P", "Q", "R", "P", None, "Q"):
        image = render(engine, base, name, unet_only)
        if name is None:
            continue
        assert np.abs(image - references[name]).max() <= 1, name
    resident = engine.adapters(base)
    assert resident.hotswaps == 3 and resident.loads == 5  # R, P and Q replaced in place
