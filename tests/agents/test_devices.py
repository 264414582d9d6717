"""Where and in what precision the models run: a device per role, half precision for the
stage models where asked (float16 on a GPU by default; bfloat16 here, on the CPU), SDPA
attention, and a compiled UNet behind a setting."""
from __future__ import annotations

import importlib.util
import numpy as np
import pytest
import torch
from PIL import Image

from agents.models.stage_models import StageModels
from gpu_agent.engine import RenderEngine
from streams.core.settings import Settings
from tests.conftest import TEST_DEVICE

# Half precision: float16 on a GPU (the default there), bfloat16 on the CPU (which lacks
# fast float16 kernels).
HALF = "float16" if TEST_DEVICE.startswith("cuda") else "bfloat16"


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A drawn room: a floor, a wall, a window and a sofa."""
    from PIL import ImageDraw

    image = Image.new("RGB", (160, 120), (200, 190, 170))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 80, 160, 120), fill=(120, 90, 60))
    draw.rectangle((100, 15, 145, 55), fill=(170, 210, 240))
    draw.rounded_rectangle((20, 60, 90, 95), radius=8, fill=(60, 110, 80))
    return image


def models_with(tiny_models, **settings) -> StageModels:
    return StageModels(Settings(models_dir=tiny_models, **settings))


def test_each_role_runs_on_its_own_device_and_precision(tiny_models):
    models = models_with(tiny_models, devices={"embedder": "cpu"}, device=TEST_DEVICE,
                         stage_dtype=HALF)
    embedder, depth = models.embedder, models.depth
    assert embedder.device == "cpu" and embedder.dtype == getattr(torch, HALF)
    assert next(embedder.model.parameters()).dtype == getattr(torch, HALF)
    assert depth.device == TEST_DEVICE
    assert next(depth.model.parameters()).device.type == TEST_DEVICE.split(":")[0]
    # Auto precision: half on a GPU, full on the CPU (no fast half kernels there).
    auto = models_with(tiny_models, device=TEST_DEVICE).embedder
    assert auto.dtype == (torch.float16 if TEST_DEVICE.startswith("cuda") else torch.float32)
    assert auto.model.config._attn_implementation == "sdpa"


def test_half_precision_stage_models_find_what_full_precision_finds(tiny_models, photo):
    full = models_with(tiny_models, device=TEST_DEVICE, stage_dtype="float32")
    half = models_with(tiny_models, device=TEST_DEVICE, stage_dtype=HALF)
    crops = [photo, photo.crop((0, 0, 80, 60))]
    a, b = full.embedder.embed_images(crops), half.embedder.embed_images(crops)
    assert a.dtype == b.dtype == np.float32
    assert np.all(np.sum(a * b, axis=1) > 0.99)  # the same direction, cosine-wise
    depth_full = np.asarray(full.depth.estimate(photo), np.float32)
    depth_half = np.asarray(half.depth.estimate(photo), np.float32)
    assert depth_half.shape == depth_full.shape == (120, 160)
    assert np.corrcoef(depth_full.ravel(), depth_half.ravel())[0, 1] > 0.95
    # OWLv2's image processor needs torchvision (fast) or scipy (slow); a GPU machine may
    # have neither (bench/gpu_check.sh).
    if importlib.util.find_spec("torchvision") or importlib.util.find_spec("scipy"):
        found = half.detector.detect(photo, ["sofa", "lamp"], 0.0, 5)
        assert found and all(0 <= d.box.x0 <= d.box.x1 <= 160 for d in found)


def test_a_compiled_unet_is_compiled_in_place_once_for_every_shared_view(tiny_models):
    engine = RenderEngine(TEST_DEVICE, "float32", cache_size=2, compile_unet=True)
    base = str(tiny_models / "diffusion")
    depth = engine.pipeline(base, str(tiny_models / "controlnet_depth"))
    canny = engine.pipeline(base, str(tiny_models / "controlnet_canny"))
    assert depth.unet is canny.unet  # one UNet, shared
    assert depth.unet._compiled_call_impl is not None  # nn.Module.compile: compiled in place
    plain = RenderEngine(TEST_DEVICE, "float32", cache_size=1)
    assert plain.pipeline(base, str(tiny_models / "controlnet_depth")
                          ).unet._compiled_call_impl is None
