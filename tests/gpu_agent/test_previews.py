"""Live previews: a render's latents become a small JPEG every k steps (never the last step),
by the linear projection by default or by a tiny VAE when one is configured; the preview of
the last steps looks like the finished image; a render with previews draws the same image as
one without."""
from __future__ import annotations

import base64
import io

import numpy as np
import torch
from diffusers import AutoencoderTiny
from PIL import Image

from gpu_agent.engine import RenderEngine, Shot
from gpu_agent.previews import Previews
from schemas.params import RenderParams
from tests.conftest import TEST_DEVICE

PARAMS = RenderParams(steps=4, guidance=7.5, controlnet_scale=1.0, seed=3, width=64, height=64,
                      negative_prompt="", num_images=2)


def decoded(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_previews_are_due_every_k_steps_but_never_on_the_last():
    every_two = Previews(every_steps=2, size=32)
    assert [s for s in range(1, 11) if every_two.due(s, 10)] == [2, 4, 6, 8]
    assert not any(Previews(every_steps=0, size=32).due(s, 10) for s in range(1, 11))


def test_the_linear_projection_colours_latents_at_the_preview_size():
    latents = torch.zeros(4, 8, 16)
    latents[0] = 2.0  # the first channel carries mostly brightness: a light grey
    preview = decoded(Previews(every_steps=1, size=48).data_uri(latents))
    assert preview.size == (48, 24)  # the longer side at `size`, the aspect kept
    pixel = np.asarray(preview.convert("RGB"))[12, 24]
    assert (pixel > 150).all()
    dark = np.asarray(Previews(1, 48).image(-latents))[12, 24]
    assert (dark < 100).all()


def tiny_vae(folder) -> None:
    """An AutoencoderTiny of taesd's shape (upscaling 8 times) with 8 channels a block."""
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8),
                    decoder_block_out_channels=(8, 8, 8, 8),
                    num_encoder_blocks=(1, 1, 1, 1),
                    num_decoder_blocks=(1, 1, 1, 1)).save_pretrained(folder)


def test_a_tiny_vae_decodes_previews_when_one_is_configured(tmp_path):
    tiny_vae(tmp_path / "taesd")
    previews = Previews.load(1, 64, "sd15", str(tmp_path / "taesd"), "cpu", torch.float32)
    assert previews.decoder is not None
    image = previews.image(torch.randn(4, 8, 8))
    assert image.size == (64, 64)


def test_a_tiny_vae_decodes_only_what_the_preview_shows(tmp_path):
    """A large render's latents are shrunk before the decoder: a 64 px preview of a 1024x768
    render decodes 8x6 latents (the decoder upscales 8 times), not 128x96."""
    tiny_vae(tmp_path / "taesd")
    previews = Previews.load(1, 64, "sd15", str(tmp_path / "taesd"), "cpu", torch.float32)
    decoded = []
    previews.decoder.decoder.register_forward_hook(
        lambda module, inputs, output: decoded.append(tuple(inputs[0].shape[-2:])))
    image = previews.image(torch.randn(4, 96, 128))
    assert decoded == [(6, 8)]
    assert image.size == (64, 48)


def test_a_render_reports_each_steps_latents_and_draws_the_same_image(tiny_models):
    engine = RenderEngine(TEST_DEVICE, "float32", cache_size=2)
    model, controlnet = str(tiny_models / "diffusion"), str(tiny_models / "controlnet_depth")
    control = Image.radial_gradient("L").convert("RGB")
    seen = []
    previews = Previews(every_steps=1, size=32)

    def on_step(step, total, latents):
        seen.append((step, total, previews.data_uri(latents()) if previews.due(step, total)
                     else None))

    watched = engine.render_shots(model, controlnet,
                                  [Shot("a cozy room", PARAMS, control=control, on_step=on_step)])
    quiet = engine.render(model, controlnet, "a cozy room", control, PARAMS)
    assert [(step, total) for step, total, _ in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(uri is not None for _, _, uri in seen[:3]) and seen[3][2] is None
    assert all(decoded(uri).size == (32, 32) for _, _, uri in seen[:3])
    for a, b in zip(watched[0], quiet):
        assert np.array_equal(np.asarray(a), np.asarray(b))
