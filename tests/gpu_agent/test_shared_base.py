"""One copy of the base model per GPU worker: the ControlNet pipelines and the avatar pipeline
share one UNet, VAE and text encoder, draw exactly what separately loaded pipelines draw, and
hold little more than one pipeline plus the ControlNets."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gpu_agent.engine import RenderEngine
from schemas.params import RenderParams
from tests.conftest import TEST_DEVICE
from tests.gpu_agent.test_adapters import PROMPT, trained_adapter

PARAMS = RenderParams(steps=2, guidance=7.5, controlnet_scale=1.0, seed=21, width=64, height=64,
                      negative_prompt="blurry", num_images=1)
CONTROLNETS = ("controlnet_depth", "controlnet_canny", "controlnet_seg")


@pytest.fixture(scope="module")
def engines(tiny_models):
    """The same warm pipelines, shared and loaded separately."""
    built = {}
    for shared in (True, False):
        engine = RenderEngine(TEST_DEVICE, "float32", cache_size=3, share_base=shared)
        for task in CONTROLNETS:
            engine.pipeline(str(tiny_models / "diffusion"), str(tiny_models / task))
        engine.text2img_pipeline(str(tiny_models / "diffusion"))
        built[shared] = engine
    return built


def controlnet_render(engine, tiny_models, task: str) -> np.ndarray:
    control = Image.radial_gradient("L").convert("RGB").resize((64, 64))
    [image] = engine.render(str(tiny_models / "diffusion"), str(tiny_models / task),
                            "(a cozy room)1.0, (green sofa)0.8", control, PARAMS)
    return np.asarray(image)


def test_shared_pipelines_use_one_unet_vae_and_text_encoder(engines, tiny_models):
    engine = engines[True]
    pipes = engine.loaded_pipelines()
    assert len(pipes) == 4  # three ControlNet pipelines and the base (the avatar pipeline)
    for component in ("unet", "vae", "text_encoder"):
        assert len({id(getattr(pipe, component)) for pipe in pipes}) == 1, component
    assert len({id(pipe.controlnet) for pipe in pipes if hasattr(pipe, "controlnet")}) == 3
    assert len({id(pipe.scheduler) for pipe in pipes}) == 4  # timesteps are per call
    separate = engines[False].loaded_pipelines()
    assert len({id(pipe.unet) for pipe in separate}) == 4


def test_shared_and_separate_pipelines_draw_the_same_pixels(engines, tiny_models):
    for task in CONTROLNETS:
        assert np.array_equal(controlnet_render(engines[True], tiny_models, task),
                              controlnet_render(engines[False], tiny_models, task)), task
    base = str(tiny_models / "diffusion")
    shared, separate = (np.asarray(engines[flag].avatar(base, None, None, PROMPT, PARAMS)[0])
                        for flag in (True, False))
    assert np.array_equal(shared, separate)


def test_an_avatar_adapter_never_leaks_into_a_controlnet_render(engines, tiny_models,
                                                                tmp_path):
    from pathlib import Path

    base = str(tiny_models / "diffusion")
    adapter = Path(trained_adapter(base, 2, tmp_path))
    engine = engines[True]
    before = controlnet_render(engine, tiny_models, "controlnet_depth")
    with_adapter = engine.avatar(base, "person-a", adapter, PROMPT, PARAMS)[0]
    without = engine.avatar(base, None, None, PROMPT, PARAMS)[0]
    assert np.abs(np.asarray(with_adapter, np.int16) - np.asarray(without, np.int16)).mean() > 1
    engine.avatar(base, "person-a", adapter, PROMPT, PARAMS)  # the adapter active again
    assert np.array_equal(controlnet_render(engine, tiny_models, "controlnet_depth"), before)


def test_the_shared_pipelines_hold_one_base_plus_the_controlnets(engines):
    import torch

    def weights(module: torch.nn.Module) -> int:
        return sum(t.numel() * t.element_size()
                   for t in (*module.parameters(), *module.buffers()))

    pipes = engines[False].loaded_pipelines()
    one_base = sum(weights(pipes[0].components[name])
                   for name in ("unet", "vae", "text_encoder"))
    controlnets = sum(weights(pipe.controlnet) for pipe in pipes if hasattr(pipe, "controlnet"))
    assert engines[True].resident_bytes() <= 1.2 * (one_base + controlnets)
    assert engines[False].resident_bytes() >= 3.5 * one_base  # four copies, loaded separately
