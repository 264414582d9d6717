"""DreamBooth with LoRA on Stable Diffusion 1.x/2.x: the training loop of diffusers'
`examples/dreambooth/train_dreambooth_lora.py`, as a function a worker calls in a thread.

What it keeps from the script: frozen VAE, text encoder and UNet with peft LoRA layers on the
UNet's attention projections (and optionally the text encoder's), the noise-prediction MSE
(epsilon or v-prediction, as the scheduler says), prior preservation with class images, AdamW,
gradient clipping, mixed precision on a GPU, and the adapter saved with `save_lora_weights`.
What it changes, for a streaming worker:
- every random draw of step k (which photos, the noise, the timesteps) comes from a generator
  seeded by (seed, k), so a run resumed from a checkpoint at step k continues exactly as the
  uninterrupted run would have;
- the photos' latent distributions are encoded once, not at every step (the VAE is frozen);
- a checkpoint (the LoRA weights, the optimizer's state, the losses) is handed to a callback
  every `checkpoint_every` steps, and a run can start from one.
"""
from __future__ import annotations

import copy
import io
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from agents.models.device import pick_device
from schemas.avatars import ResolvedTrainParams

UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# As the script: AdamW's betas, weight decay and epsilon, and the gradient norm clipped to 1.
ADAM_BETAS = (0.9, 0.999)
ADAM_WEIGHT_DECAY = 1e-2
ADAM_EPSILON = 1e-8
MAX_GRAD_NORM = 1.0


@dataclass
class Checkpoint:
    step: int
    lora: dict[str, torch.Tensor]  # peft state: "unet.<name>" and "text_encoder.<name>"
    optimizer: dict
    losses: list[float] = field(default_factory=list)

    def optimizer_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(self.optimizer, buffer)
        return buffer.getvalue()

    @staticmethod
    def optimizer_from(data: bytes) -> dict:
        # weights_only: a checkpoint in storage is data, never code.
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


@dataclass
class TrainedAdapter:
    unet_lora: dict[str, torch.Tensor]
    text_encoder_lora: dict[str, torch.Tensor] | None
    steps: int
    final_loss: float
    losses: list[float]
    resumed_from: int
    seconds: float

    def save(self, directory: str) -> None:
        """The adapter as diffusers loads it (pytorch_lora_weights.safetensors)."""
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(
            directory, unet_lora_layers=self.unet_lora,
            text_encoder_lora_layers=self.text_encoder_lora, safe_serialization=True)


@dataclass
class TrainingRun:
    base_model: str
    photos: list[Image.Image]  # the face crops, square, at params.resolution
    instance_prompt: str  # "a photo of sks person"
    class_prompt: str  # "a photo of person"
    params: ResolvedTrainParams
    class_images: list[Image.Image] = field(default_factory=list)
    device: str = "auto"


StepCallback = Callable[[int, int, float], None]
CheckpointCallback = Callable[[Checkpoint], None]


def precision(params: ResolvedTrainParams, device: str) -> torch.dtype | None:
    """The autocast dtype: half precision on a GPU unless turned off; none on the CPU."""
    choice = params.mixed_precision
    if choice == "no" or (choice == "auto" and not device.startswith("cuda")):
        return None
    if choice == "bf16":
        return torch.bfloat16
    if device.startswith("cuda"):
        return torch.float16
    return None  # fp16 asked for on a CPU: autocast there is bf16-only and slow


def load_base(base_model: str, device: str, dtype: torch.dtype = torch.float32):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base_model, torch_dtype=dtype,
                                                   safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate_class_images(base_model: str, prompt: str, count: int, resolution: int,
                          steps: int, seed: int, device: str = "auto",
                          batch: int = 4) -> list[Image.Image]:
    """Prior-preservation images: what the base model draws for the class prompt alone."""
    device = pick_device(device)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = load_base(base_model, device, dtype)
    images: list[Image.Image] = []
    with torch.inference_mode():
        for start in range(0, count, batch):
            n = min(batch, count - start)
            generators = [torch.Generator("cpu").manual_seed(seed + start + i) for i in range(n)]
            images += pipe(prompt, num_inference_steps=steps, height=resolution,
                           width=resolution, num_images_per_prompt=n,
                           generator=generators).images
    return images


def _pixels(images: list[Image.Image], resolution: int) -> torch.Tensor:
    arrays = [np.asarray(image.convert("RGB").resize((resolution, resolution),
                                                     Image.Resampling.BICUBIC),
                         dtype=np.float32) for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def train(run: TrainingRun, on_step: StepCallback | None = None,
          on_checkpoint: CheckpointCallback | None = None,
          resume: Checkpoint | None = None) -> TrainedAdapter:
    from diffusers import DDPMScheduler
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    started = time.perf_counter()
    params = run.params
    device = pick_device(run.device)
    autocast_dtype = precision(params, device)
    frozen_dtype = autocast_dtype or torch.float32
    pipe = load_base(run.base_model, device, frozen_dtype)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    for model in (unet, vae, text_encoder):
        model.requires_grad_(False)

    torch.manual_seed(params.seed)  # the LoRA layers' initial weights
    unet.add_adapter(LoraConfig(r=params.rank, lora_alpha=params.alpha,
                                init_lora_weights="gaussian", target_modules=UNET_TARGETS))
    if params.train_text_encoder:
        text_encoder.add_adapter(LoraConfig(r=params.rank, lora_alpha=params.alpha,
                                            init_lora_weights="gaussian",
                                            target_modules=TEXT_ENCODER_TARGETS))
    trained = [unet] + ([text_encoder] if params.train_text_encoder else [])
    for model in trained:  # the LoRA weights train in float32 whatever the frozen ones are
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
    if params.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if params.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    trainable = [p for model in trained for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate, betas=ADAM_BETAS,
                                  weight_decay=ADAM_WEIGHT_DECAY, eps=ADAM_EPSILON)

    first_step, losses = 0, []
    if resume is not None:
        set_peft_model_state_dict(unet, _part(resume.lora, "unet"))
        if params.train_text_encoder:
            set_peft_model_state_dict(text_encoder, _part(resume.lora, "text_encoder"))
        optimizer.load_state_dict(resume.optimizer)
        first_step, losses = resume.step, list(resume.losses)

    def token_ids(prompt: str) -> torch.Tensor:
        return tokenizer(prompt, padding="max_length", truncation=True,
                         max_length=tokenizer.model_max_length,
                         return_tensors="pt").input_ids.to(device)

    def encode(ids: torch.Tensor) -> torch.Tensor:
        return text_encoder(ids)[0]

    prior = params.prior_preservation and bool(run.class_images)
    with torch.no_grad():
        instance_latents = _latent_stats(vae, run.photos, params.resolution, device,
                                         frozen_dtype)
        class_latents = _latent_stats(vae, run.class_images, params.resolution, device,
                                      frozen_dtype) if prior else None
    instance_ids, class_ids = token_ids(run.instance_prompt), token_ids(run.class_prompt)
    if not params.train_text_encoder:
        with torch.no_grad():
            instance_text, class_text = encode(instance_ids), encode(class_ids)

    scaling = vae.config.scaling_factor
    unet.train()
    if params.train_text_encoder:
        text_encoder.train()
    loss_value = losses[-1] if losses else float("nan")
    for step in range(first_step, params.steps):
        generator = torch.Generator("cpu").manual_seed(_step_seed(params.seed, step))
        latents = _sample(instance_latents, params.batch_size, generator) * scaling
        if params.train_text_encoder:
            texts = [encode(instance_ids)]
        else:
            texts = [instance_text]
        if prior:
            latents = torch.cat([latents, _sample(class_latents, params.batch_size,
                                                  generator) * scaling])
            texts.append(encode(class_ids) if params.train_text_encoder else class_text)
        text = torch.cat([t.expand(params.batch_size, -1, -1) for t in texts])
        latents = latents.to(device)
        noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps,
                                  (latents.shape[0],), generator=generator).to(device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        with torch.autocast(device.split(":")[0], dtype=autocast_dtype,
                            enabled=autocast_dtype is not None):
            prediction = unet(noisy, timesteps, text.to(noisy.dtype)).sample
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        loss = _loss(prediction.float(), target.float(), prior, params.prior_loss_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise RuntimeError(f"the loss diverged at step {step + 1} ({loss_value}); "
                               f"lower the learning rate")
        losses.append(loss_value)
        done = step + 1
        if on_step:
            on_step(done, params.steps, loss_value)
        if on_checkpoint and done % params.checkpoint_every == 0 and done < params.steps:
            # Copies: the optimizer's state changes in place at the next step.
            on_checkpoint(Checkpoint(done, _lora_state(unet, text_encoder, params),
                                     copy.deepcopy(optimizer.state_dict()), list(losses)))

    unet_lora = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    text_lora = (convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder))
                 if params.train_text_encoder else None)
    return TrainedAdapter(
        unet_lora={k: v.detach().float().cpu().contiguous() for k, v in unet_lora.items()},
        text_encoder_lora=None if text_lora is None else
        {k: v.detach().float().cpu().contiguous() for k, v in text_lora.items()},
        steps=params.steps, final_loss=loss_value, losses=losses,
        resumed_from=first_step, seconds=time.perf_counter() - started)


def _step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63 - 1)


def _latent_stats(vae, images: list[Image.Image], resolution: int, device: str,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's latent distribution (mean, std), encoded once, kept on the CPU."""
    means, stds = [], []
    for start in range(0, len(images), 8):
        pixels = _pixels(images[start:start + 8], resolution).to(device, dtype)
        distribution = vae.encode(pixels).latent_dist
        means.append(distribution.mean.float().cpu())
        stds.append(distribution.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def _sample(stats: tuple[torch.Tensor, torch.Tensor], count: int,
            generator: torch.Generator) -> torch.Tensor:
    """count latents drawn from randomly chosen images' distributions."""
    mean, std = stats
    chosen = torch.randint(0, mean.shape[0], (count,), generator=generator)
    return mean[chosen] + std[chosen] * torch.randn(mean[chosen].shape, generator=generator)


def _loss(prediction: torch.Tensor, target: torch.Tensor, prior: bool,
          prior_weight: float) -> torch.Tensor:
    if not prior:
        return F.mse_loss(prediction, target, reduction="mean")
    instance_pred, class_pred = prediction.chunk(2)
    instance_target, class_target = target.chunk(2)
    return (F.mse_loss(instance_pred, instance_target, reduction="mean")
            + prior_weight * F.mse_loss(class_pred, class_target, reduction="mean"))


def _lora_state(unet, text_encoder, params: ResolvedTrainParams) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    state = {f"unet.{k}": v.detach().cpu().clone()
             for k, v in get_peft_model_state_dict(unet).items()}
    if params.train_text_encoder:
        state.update({f"text_encoder.{k}": v.detach().cpu().clone()
                      for k, v in get_peft_model_state_dict(text_encoder).items()})
    return state


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
