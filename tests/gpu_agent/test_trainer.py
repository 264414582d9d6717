"""DreamBooth-LoRA training on the tiny random-weight base model (real diffusers and peft code):
checkpoints, resuming, and the saved adapter that diffusers loads back."""
from __future__ import annotations

import pytest
import torch
from PIL import ImageOps

from gpu_agent.trainer import TrainingRun, generate_class_images, train
from schemas.avatars import ResolvedTrainParams
from tests import faces


def params(**changes) -> ResolvedTrainParams:
    values = dict(steps=9, learning_rate=1e-3, rank=4, alpha=4, resolution=64, batch_size=2,
                  train_text_encoder=True, prior_preservation=True, class_images=2,
                  prior_loss_weight=1.0, mixed_precision="auto", gradient_checkpointing=False,
                  checkpoint_every=4, seed=11)
    return ResolvedTrainParams(**{**values, **changes})


@pytest.fixture(scope="module")
def base(tiny_models) -> str:
    return str(tiny_models / "diffusion")


@pytest.fixture(scope="module")
def photos():
    face = faces.astronaut().crop((100, 0, 356, 256)).resize((64, 64))
    return [face, ImageOps.mirror(face)]


@pytest.fixture(scope="module")
def class_images(base):
    return generate_class_images(base, "a photo of person", 2, 64, steps=2, seed=0)


def run_of(base, photos, class_images, **changes) -> TrainingRun:
    return TrainingRun(base, photos, "a photo of zqk person", "a photo of person",
                       params(**changes), class_images, device="cpu")


def test_a_resumed_run_ends_exactly_where_the_uninterrupted_one_does(base, photos,
                                                                    class_images):
    checkpoints, steps = [], []
    whole = train(run_of(base, photos, class_images), on_step=lambda s, n, loss:
                  steps.append((s, n)), on_checkpoint=checkpoints.append)
    assert steps == [(s, 9) for s in range(1, 10)]
    assert [c.step for c in checkpoints] == [4, 8]  # none at the end: the adapter is saved

    resumed = train(run_of(base, photos, class_images), resume=checkpoints[0])
    assert resumed.resumed_from == 4 and resumed.steps == 9
    assert resumed.losses == whole.losses
    assert whole.unet_lora.keys() == resumed.unet_lora.keys()
    assert all(torch.equal(whole.unet_lora[k], resumed.unet_lora[k]) for k in whole.unet_lora)
    assert all(torch.equal(whole.text_encoder_lora[k], resumed.text_encoder_lora[k])
               for k in whole.text_encoder_lora)


def test_the_optimizer_state_survives_its_trip_through_bytes(base, photos, class_images):
    checkpoints = []
    train(run_of(base, photos, class_images, steps=5), on_checkpoint=checkpoints.append)
    checkpoint = checkpoints[0]
    restored = checkpoint.optimizer_from(checkpoint.optimizer_bytes())
    assert restored["param_groups"][0]["lr"] == pytest.approx(1e-3)
    assert len(restored["state"]) == len(checkpoint.optimizer["state"]) > 0


def test_the_adapter_is_saved_as_diffusers_loads_it(base, photos, class_images, tmp_path):
    from diffusers import StableDiffusionPipeline

    adapter = train(run_of(base, photos, class_images, steps=2, train_text_encoder=False,
                           prior_preservation=False))
    assert adapter.text_encoder_lora is None
    adapter.save(str(tmp_path))
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.load_lora_weights(str(tmp_path), adapter_name="person")
    assert pipe.get_active_adapters() == ["person"]


def test_a_diverging_run_fails_with_the_cause(base, photos, class_images):
    with pytest.raises(RuntimeError, match="diverged at step"):
        train(run_of(base, photos, class_images, steps=4, learning_rate=1e30))


def test_mixed_precision_trains_half_precision_weights_with_float32_lora(base, photos,
                                                                         class_images):
    """bf16 autocast (what a GPU run does in fp16; a CPU autocasts bf16 only): the frozen
    weights load in half precision, the LoRA weights train in float32, the loss stays finite."""
    checkpoints = []
    adapter = train(run_of(base, photos, class_images, steps=3, checkpoint_every=2,
                           mixed_precision="bf16"), on_checkpoint=checkpoints.append)
    assert {tensor.dtype for tensor in checkpoints[0].lora.values()} == {torch.float32}
    assert all(loss == loss for loss in adapter.losses)  # no NaN
    assert len(adapter.losses) == 3
